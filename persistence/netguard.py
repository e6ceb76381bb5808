"""Outbound HTTP to addresses users give us (webhook receivers), without reaching inside our network.

A URL is checked by resolving its host and refusing it when any address it resolves to is
loopback, private, link-local, multicast, unspecified, reserved or shared (carrier-grade NAT) —
unless ``allow_private`` says the deployment sends to its own network on purpose. Cloud metadata
endpoints are refused even then: nothing legitimate receives webhooks there.

Checking a name and then letting an HTTP library resolve it again would let DNS answer
differently the second time (rebinding). ``post`` therefore connects to the very addresses that
were checked, sending the original host name in ``Host`` and, for HTTPS, in SNI and the
certificate check. Redirects are never followed: a redirect is an answer like any other.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

# The metadata services of the big clouds (AWS, GCP, Azure, ... on IPv4; AWS on IPv6).
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
# 100.64.0.0/10 is not "private" to Python's ipaddress, but it is nobody's public address.
_SHARED = ipaddress.ip_network("100.64.0.0/10")

Resolver = Callable[[str, int], list[str]]


class RefusedURL(ValueError):
    """The URL may not be sent to: bad form, unresolvable, or an address we do not send to."""


class Unresolvable(RefusedURL):
    """The host name does not resolve (now): worth trying again later, unlike the other refusals."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, in order) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Response:
    status: int
    excerpt: str
    duration_ms: int
    address: str
    retry_after: float | None = None


def address_problem(address: str, *, allow_private: bool = False) -> str | None:
    """Why ``address`` may not be sent to (``"loopback"``, ``"private"``, ...), or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "the unspecified address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private or (ip.version == 4 and ip in _SHARED):
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the order the system prefers."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def check_url(url: str, *, allow_private: bool = False, resolve: Resolver = system_resolver) -> Target:
    """Parse and resolve ``url``; raise ``RefusedURL`` with the reason when it may not be sent to.

    Every address the name resolves to must be allowed: a name that also resolves to an internal
    address is refused, whichever address a connection would have picked.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise RefusedURL(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedURL("only http:// and https:// URLs can receive webhooks")
    if not parts.hostname:
        raise RefusedURL("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedURL("credentials in the URL are not allowed; authenticate with the signature instead")
    host = parts.hostname
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise Unresolvable(f"{host} does not resolve: {exc}") from None
    if not addresses:
        raise Unresolvable(f"{host} does not resolve to any address")
    for address in addresses:
        problem = address_problem(address, allow_private=allow_private)
        if problem:
            where = address if host == address else f"{host} resolves to {address}, which"
            raise RefusedURL(f"{where} is {problem}; webhooks are not sent there")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, host, port, path, tuple(addresses))


class _PinnedHTTP(http.client.HTTPConnection):
    # ``host`` stays the name (for the Host header); the socket goes to the checked address.
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        # SNI and the certificate check use the name from the URL, not the address.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(target: Target, body: bytes, headers: Mapping[str, str], *, timeout: float,
         excerpt_bytes: int = 1024, ssl_context: ssl.SSLContext | None = None) -> Response:
    """POST ``body`` to a checked target, connecting only to its checked addresses.

    Tries the addresses in order until one accepts the connection. ``timeout`` bounds the
    connection and each read; at most ``excerpt_bytes`` of the answer are read. Raises
    ``OSError`` (timeouts and TLS errors included) or ``http.client.HTTPException`` when no answer
    came; any answer, a redirect or an error status included, is returned.
    """
    started = time.monotonic()
    last_error: BaseException | None = None
    for address in target.addresses:
        if target.scheme == "https":
            conn: http.client.HTTPConnection = _PinnedHTTPS(
                target.host, target.port, address, timeout, ssl_context or ssl.create_default_context()
            )
        else:
            conn = _PinnedHTTP(target.host, target.port, address, timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:
                last_error = exc
                continue
            conn.request("POST", target.path, body=body, headers=dict(headers))
            answer = conn.getresponse()
            excerpt = answer.read(excerpt_bytes)
            return Response(
                status=answer.status,
                excerpt=excerpt.decode("utf-8", "replace"),
                duration_ms=int((time.monotonic() - started) * 1000),
                address=address,
                retry_after=_retry_after(answer.getheader("Retry-After")),
            )
        finally:
            conn.close()
    assert last_error is not None
    raise last_error


def _retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form: an HTTP date from a receiver's clock is not worth trusting.
    if value and value.strip().isdigit():
        return float(value.strip())
    return None
