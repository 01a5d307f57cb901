"""Real local servers for notification tests: an SMTP server (aiosmtpd) and a scripted webhook receiver.

Both run in their own threads, so tests on any event loop (pytest-asyncio's, TestClient's, a fresh
``asyncio.run``) can talk to them over real sockets.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

SMTP_USER = "alerts-bot"
SMTP_PASSWORD = "smtp-secret-123"
SENDER = "alerts@khalsi.test"


def free_port() -> int:
    """A port nothing listens on right now (connecting to it is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- SMTP ---------------------------------------------------------------------------------------------


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    authenticated_as: str | None


@dataclass
class Mailbox:
    """What the SMTP server accepted, and the replies it will give to the next DATA commands."""

    port: int = 0
    messages: list[ReceivedMail] = field(default_factory=list)
    data_replies: deque[str] = field(default_factory=deque)
    data_commands: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.data_commands += 1
        reply = self.data_replies.popleft() if self.data_replies else "250 Message accepted for delivery"
        if reply.startswith("250"):
            login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else None
            parsed = message_from_bytes(envelope.content, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            self.messages.append(
                ReceivedMail(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    message=parsed,
                    authenticated_as=login,
                )
            )
        return reply

    def to(self, address: str) -> list[ReceivedMail]:
        return [mail for mail in self.messages if address in mail.rcpt_tos]


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    """A real SMTP server on 127.0.0.1 that requires AUTH (user ``SMTP_USER``) over plain TCP."""
    mailbox = Mailbox(port=free_port())
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=mailbox.port,
        authenticator=_authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()


def smtp_settings(mailbox: Mailbox, *, password: str = SMTP_PASSWORD) -> dict[str, Any]:
    """``Settings(smtp=...)`` pointing at the local server."""
    return {
        "host": "127.0.0.1",
        "port": mailbox.port,
        "user": SMTP_USER,
        "password": password,
        "sender": SENDER,
        "use_tls": False,
    }


# --- webhooks -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """An HTTP server answering each path from a script (replies in order, then a default reply)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self.requests: list[ReceivedRequest] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = receiver._record(self.path, dict(self.headers.items()), body)
                if reply.delay_seconds:
                    time.sleep(reply.delay_seconds)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self._lock:
            self.requests.append(ReceivedRequest(path, headers, body, time.monotonic()))
            script = self._scripts.get(path)
            if script:
                return script.popleft()
            return self._defaults.get(path, Reply(204))

    def script(self, path: str, *replies: Reply, then: Reply = Reply(204)) -> str:
        """Answer ``path`` with ``replies`` in order, then ``then`` forever; returns its URL."""
        with self._lock:
            self._scripts[path] = deque(replies)
            self._defaults[path] = then
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str) -> list[ReceivedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver
