"""E-mail over SMTP with the standard library, run in a worker thread (smtplib blocks).

Honours ``settings.smtp``: host, port, user/password (LOGIN after the TLS handshake when set),
sender, and ``use_tls``: implicit TLS on port 465, STARTTLS on any other port (refused, not
downgraded, when the server does not offer it).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from khalsi.notify.retry import (
    DEFAULT_POLICY,
    DeliveryResult,
    PermanentDeliveryError,
    RetryPolicy,
    Sleep,
    TransientDeliveryError,
    deliver_with_retries,
)
from khalsi.settings import SMTPSettings

IMPLICIT_TLS_PORT = 465


def _is_transient_code(code: int) -> bool:
    # SMTP replies: 4xx means "try again later", 5xx means "this will not work".
    return 400 <= code < 500


class EmailSender:
    """Sends one plain-text e-mail per call, retrying transient faults."""

    def __init__(self, settings: SMTPSettings, *, policy: RetryPolicy = DEFAULT_POLICY, sleep: Sleep = asyncio.sleep):
        self._settings = settings
        self._policy = policy
        self._sleep = sleep

    def build(self, *, to: str, subject: str, text: str) -> EmailMessage:
        """The message as it will be sent (headers and a UTF-8 plain-text body)."""
        message = EmailMessage()
        message["From"] = self._settings.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain=self._settings.sender.rpartition("@")[2] or None)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-responders must not answer
        message.set_content(text)
        return message

    async def send(self, *, to: str, subject: str, text: str) -> DeliveryResult:
        """Deliver to ``to``; the result says whether, after how many attempts, or why not."""
        message = self.build(to=to, subject=subject, text=text)

        async def attempt() -> str:
            return await asyncio.to_thread(self._send_once, message, to)

        return await deliver_with_retries(attempt, policy=self._policy, sleep=self._sleep)

    def _connect(self) -> smtplib.SMTP:
        settings, timeout = self._settings, self._policy.timeout_seconds
        if settings.use_tls and settings.port == IMPLICIT_TLS_PORT:
            return smtplib.SMTP_SSL(settings.host, settings.port, timeout=timeout, context=ssl.create_default_context())
        client = smtplib.SMTP(settings.host, settings.port, timeout=timeout)
        if settings.use_tls:
            client.ehlo()
            if not client.has_extn("starttls"):
                client.close()
                raise PermanentDeliveryError(
                    f"{settings.host}:{settings.port} does not offer STARTTLS and use_tls is on; "
                    "refusing to send in clear"
                )
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        return client

    def _send_once(self, message: EmailMessage, to: str) -> str:
        settings = self._settings
        where = f"{settings.host}:{settings.port}"
        try:
            with self._connect() as client:
                if settings.user:
                    password = settings.password.get_secret_value() if settings.password else ""
                    client.login(settings.user, password)
                refused = client.send_message(message, from_addr=settings.sender, to_addrs=[to])
        except PermanentDeliveryError:
            raise
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            reason = "; ".join(f"{code} {text.decode(errors='replace')}" for code, text in error.recipients.values())
            if codes and all(_is_transient_code(code) for code in codes):
                raise TransientDeliveryError(f"SMTP {where} deferred the recipient: {reason}") from error
            raise PermanentDeliveryError(f"SMTP {where} refused the recipient: {reason}") from error
        except smtplib.SMTPResponseException as error:
            # SMTPSenderRefused, SMTPDataError, SMTPAuthenticationError, SMTPHeloError... carry a code.
            reply = (
                error.smtp_error.decode(errors="replace") if isinstance(error.smtp_error, bytes) else error.smtp_error
            )
            text = f"SMTP {where} answered {error.smtp_code} {reply}"
            if _is_transient_code(error.smtp_code):
                raise TransientDeliveryError(text) from error
            raise PermanentDeliveryError(text) from error
        except smtplib.SMTPNotSupportedError as error:
            raise PermanentDeliveryError(f"SMTP {where}: {error}") from error
        except (smtplib.SMTPServerDisconnected, TimeoutError, ConnectionError) as error:
            raise TransientDeliveryError(f"SMTP {where}: {type(error).__name__}: {error}") from error
        except ssl.SSLError as error:
            raise PermanentDeliveryError(f"SMTP {where}: TLS failed: {error}") from error
        except smtplib.SMTPException as error:  # e.g. no authentication method in common
            raise PermanentDeliveryError(f"SMTP {where}: {error}") from error
        except OSError as error:  # unreachable network, DNS failure...
            raise TransientDeliveryError(f"SMTP {where}: {type(error).__name__}: {error}") from error
        if refused:
            raise PermanentDeliveryError(f"SMTP {where} refused the recipient: {refused}")
        return f"accepted by {where}"
