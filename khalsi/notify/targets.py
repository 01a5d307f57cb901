"""Where a webhook may point: public http(s) hosts only, unless the deployment allows private ones.

A user-supplied webhook URL makes the platform send requests on the user's behalf (SSRF), so two
checks stand between a URL and a connection:

- :func:`check_webhook_url`, when an alert is saved: http or https, a host, no credentials, and (not
  allowed by default) no loopback / private / link-local (cloud metadata) / reserved IP literal,
  including the legacy IPv4 spellings (``2130706433``, ``0x7f.1``), and no internal-only names
  (``localhost``, ``*.local``, ``*.internal``...). No DNS here: saving an alert stays fast and
  offline.
- :func:`ensure_public_destination`, before every send: the host is resolved and every address it
  resolves to must be public, so a public-looking name pointing at 127.0.0.1 is refused too.
  Redirects are never followed (a public host cannot bounce the request inward).

What remains: the check resolves the name, then the HTTP client resolves it again to connect, so a
DNS server answering differently within that instant (DNS rebinding) is not stopped here; an egress
firewall is the complete answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
# Names that only ever mean "this machine" or "this network".
_INTERNAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_INTERNAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".intranet", ".lan", ".home.arpa")
_HOSTNAME = re.compile(r"^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?\.?$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTargetError(ValueError):
    """A webhook URL that is malformed or points somewhere the platform must not call."""


def is_public_address(address: IPAddress) -> bool:
    """Whether an address is on the public internet (not loopback, private, link-local, reserved...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # inet_aton reads the forms browsers and resolvers accept too: 2130706433, 0x7f000001, 127.1.
    if re.fullmatch(r"[0-9a-fx.]+", host) and not re.fullmatch(r"[a-z.-]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """The URL if it may be used as a webhook target; raise :class:`UnsafeTargetError` saying why not."""
    text = url.strip()
    if len(text) > MAX_URL_LENGTH:
        raise UnsafeTargetError(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise UnsafeTargetError(f"not a valid URL: {error}") from error
    if parts.scheme.lower() not in {"http", "https"}:
        raise UnsafeTargetError("the webhook URL must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTargetError("the webhook URL must not carry credentials (user:password@)")
    host = (parts.hostname or "").lower()
    if not host:
        raise UnsafeTargetError("the webhook URL has no host")
    if port == 0:
        raise UnsafeTargetError("the webhook URL's port must be between 1 and 65535")
    literal = _ip_literal(host)
    if literal is None and not _HOSTNAME.match(host):
        raise UnsafeTargetError(f"{host!r} is not a valid host name")
    if allow_private:
        return text
    if literal is not None:
        if not is_public_address(literal):
            raise UnsafeTargetError(f"the webhook URL points at a non-public address ({literal})")
        return text
    bare = host.rstrip(".")
    if bare in _INTERNAL_NAMES or bare.endswith(_INTERNAL_SUFFIXES) or "." not in bare:
        raise UnsafeTargetError(f"the webhook URL points at an internal host name ({bare!r})")
    return text


async def ensure_public_destination(url: str) -> None:
    """Resolve the URL's host and refuse it unless every address is public (checked right before sending)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _ip_literal(host.lower())
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise LookupError(f"cannot resolve {host!r}: {error.strerror}") from error
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if not is_public_address(address):
            raise UnsafeTargetError(f"{host!r} resolves to a non-public address ({address}); refused")
