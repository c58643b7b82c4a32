"""Outbound HTTP: the one client for calls to addresses that districts and vendors type in.

Webhook delivery and SIS connectors send requests to URLs that users configure. Without a
guard, such a URL is a way into our own network (server-side request forgery): the cloud
metadata service at 169.254.169.254 hands out credentials, and admin ports on loopback or on
private ranges answer anyone inside. This module refuses every address that is not public:
private, loopback, link-local, carrier-grade NAT, multicast, reserved, documentation and
benchmarking ranges, and the IPv6 forms that embed such an IPv4 address (mapped, compatible,
NAT64, 6to4, Teredo), whatever spelling the URL uses (``http://2130706433/`` and
``http://0177.0.0.1/`` are 127.0.0.1).

Why at connect time: a check of the URL alone can be walked around. A name can resolve to a
public address when the form is saved and to 10.0.0.5 when the worker connects (DNS
rebinding), and a public receiver can answer with a redirect to the metadata service. So the
check lives in an httpcore network backend: it resolves the name itself, refuses the request
if any of the answers is refused, and dials the very address it checked, while the Host header,
TLS SNI and certificate verification keep using the name from the URL. Redirects are not
followed unless the caller asks, and then every hop goes through the same backend.

It also keeps a slow receiver from holding a worker: connect and read timeouts, plus an overall
deadline per request (a server trickling one byte at a time never trips a read timeout), and at
most ``MAX_RESPONSE_BYTES`` of a response body is read. ``send()`` and ``asend()`` never raise
for network problems: they return an :class:`OutboundResult` with a stable ``error_class``.

Settings: ``settings.OUTBOUND_HTTP`` (see bxos/settings.py). Tests turn on ``ALLOW_LOOPBACK``
to reach servers they start on 127.0.0.1, and inject a resolver with ``RESOLVER``.
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpcore
import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.utils.deconstruct import deconstructible
from django.utils.module_loading import import_string

__all__ = [
    "OutboundGuardError",
    "OutboundResult",
    "OutboundURLValidator",
    "address_refusal",
    "asend",
    "body_preview",
    "outbound_async_client",
    "outbound_client",
    "parse_ip_literal",
    "send",
    "system_resolve",
    "validate_outbound_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses the host resolves to, as strings; OSError if it does not resolve.
Resolver = Callable[[str, int], Sequence[str]]

DEFAULTS: dict[str, Any] = {
    "ALLOW_LOOPBACK": False,
    "ALLOWED_SCHEMES": ["https", "http"],
    "CONNECT_TIMEOUT": 5.0,
    "READ_TIMEOUT": 10.0,
    "WRITE_TIMEOUT": 10.0,
    "TOTAL_TIMEOUT": 15.0,
    "MAX_RESPONSE_BYTES": 16 * 1024,
    "MAX_REDIRECTS": 5,
    "MAX_CONNECTIONS": 20,
    "USER_AGENT": "BX-OS-Integration-Hub",
    "RESOLVER": "bxos.common.outbound.system_resolve",
}

# Stable codes. ValidationError codes are the first six; OutboundResult.error_class folds the
# URL-shape ones (bad_scheme, no_host, userinfo) into invalid_url.
BAD_SCHEME = "bad_scheme"
NO_HOST = "no_host"
USERINFO = "userinfo"
INVALID_URL = "invalid_url"
REFUSED_ADDRESS = "refused_address"
UNRESOLVABLE_HOST = "unresolvable_host"
TIMEOUT = "timeout"
CONNECT_ERROR = "connect_error"
CONNECTION_RESET = "connection_reset"
TOO_MANY_REDIRECTS = "too_many_redirects"
TLS_ERROR = "tls_error"
PROTOCOL_ERROR = "protocol_error"
NETWORK_ERROR = "network_error"


# --- Settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    allow_loopback: bool
    allowed_schemes: frozenset[str]
    connect_timeout: float
    read_timeout: float
    write_timeout: float
    total_timeout: float
    max_response_bytes: int
    max_redirects: int
    max_connections: int
    user_agent: str
    resolver: Resolver


def _config() -> _Config:
    # Read on every use (it is a dict merge), so a test's settings override applies at once.
    configured = getattr(settings, "OUTBOUND_HTTP", {})
    unknown = set(configured) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(f"OUTBOUND_HTTP has unknown keys: {', '.join(sorted(unknown))}")
    merged = {**DEFAULTS, **configured}
    resolver = merged["RESOLVER"]
    return _Config(
        allow_loopback=bool(merged["ALLOW_LOOPBACK"]),
        allowed_schemes=frozenset(s.lower() for s in merged["ALLOWED_SCHEMES"]),
        connect_timeout=float(merged["CONNECT_TIMEOUT"]),
        read_timeout=float(merged["READ_TIMEOUT"]),
        write_timeout=float(merged["WRITE_TIMEOUT"]),
        total_timeout=float(merged["TOTAL_TIMEOUT"]),
        max_response_bytes=int(merged["MAX_RESPONSE_BYTES"]),
        max_redirects=int(merged["MAX_REDIRECTS"]),
        max_connections=int(merged["MAX_CONNECTIONS"]),
        user_agent=str(merged["USER_AGENT"]),
        resolver=import_string(resolver) if isinstance(resolver, str) else resolver,
    )


# --- Address policy ----------------------------------------------------------------------------

LOOPBACK = "a loopback address"
_DOCUMENTATION = "a documentation address"

_V4_RULES: list[tuple[ipaddress.IPv4Network, str]] = [
    (ipaddress.IPv4Network(net), reason)
    for net, reason in [
        ("169.254.169.254/32", "the cloud metadata address (link-local)"),
        ("0.0.0.0/32", "the unspecified address"),
        ("0.0.0.0/8", "a 'this network' address (0.0.0.0/8)"),
        ("127.0.0.0/8", LOOPBACK),
        ("10.0.0.0/8", "a private address (RFC 1918)"),
        ("172.16.0.0/12", "a private address (RFC 1918)"),
        ("192.168.0.0/16", "a private address (RFC 1918)"),
        ("169.254.0.0/16", "a link-local address"),
        ("100.64.0.0/10", "a carrier-grade NAT address (100.64.0.0/10)"),
        ("192.0.0.0/24", "an IETF protocol assignment address (192.0.0.0/24)"),
        ("192.0.2.0/24", _DOCUMENTATION),
        ("198.51.100.0/24", _DOCUMENTATION),
        ("203.0.113.0/24", _DOCUMENTATION),
        ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address (240.0.0.0/4)"),
    ]
]
_V6_RULES: list[tuple[ipaddress.IPv6Network, str]] = [
    (ipaddress.IPv6Network(net), reason)
    for net, reason in [
        ("::1/128", LOOPBACK),
        ("::/128", "the unspecified address"),
        ("fd00:ec2::254/128", "the cloud metadata address (unique local)"),
        ("fc00::/7", "a private address (unique local, fc00::/7)"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address (deprecated)"),
        ("ff00::/8", "a multicast address"),
        ("2001:db8::/32", _DOCUMENTATION),
        ("2001:2::/48", "a benchmarking address (2001:2::/48)"),
        ("100::/64", "a discard-only address (100::/64)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address (64:ff9b:1::/48)"),
    ]
]
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NOT_GLOBAL = "an address that is not globally routable"


def address_refusal(address: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why ``address`` may not be dialled ("a private address (RFC 1918)"), or None if public.

    An IPv6 form that carries an IPv4 address is judged by the address it carries, because
    that is where the packets go (a dual-stack socket sends ::ffff:127.0.0.1 to 127.0.0.1).
    ``allow_loopback`` lets through 127.0.0.0/8 and ::1 only, never an embedded loopback.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return _v4_refusal(address, allow_loopback=allow_loopback)
    if address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
    if address.ipv4_mapped is not None:
        embedded = address.ipv4_mapped
        reason = _v4_refusal(embedded, allow_loopback=False)
        return f"an IPv4-mapped IPv6 address for {embedded}, {reason}" if reason else None
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        # Deprecated since 2006 and never routed: refused whatever it carries.
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        reason = _v4_refusal(embedded, allow_loopback=False)
        return f"an IPv4-compatible IPv6 address (deprecated) for {embedded}" + (
            f", {reason}" if reason else ""
        )
    for label, embedded in [
        ("a NAT64 address", _nat64_embedded(address)),
        ("a 6to4 address", address.sixtofour),
        ("a Teredo address", address.teredo[1] if address.teredo else None),
    ]:
        if embedded is not None:
            reason = _v4_refusal(embedded, allow_loopback=False)
            if reason:
                return f"{label} for {embedded}, {reason}"
    for network, reason in _V6_RULES:
        if address in network:
            return None if (reason == LOOPBACK and allow_loopback) else reason
    return None if address.is_global else _NOT_GLOBAL


def _v4_refusal(address: ipaddress.IPv4Address, *, allow_loopback: bool) -> str | None:
    for network, reason in _V4_RULES:
        if address in network:
            return None if (reason == LOOPBACK and allow_loopback) else reason
    return None if address.is_global else _NOT_GLOBAL


def _nat64_embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class OutboundGuardError(httpx.ConnectError):
    """The guard refused a request before any connection: ``code`` says why.

    A subclass of httpx.ConnectError, so that code using an :func:`outbound_client` directly
    handles it like any failure to connect; httpx passes it through unchanged.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class _ResolveTimeout(Exception):
    pass


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address that ``host`` spells, or None if it is a name to resolve.

    Accepts every IPv4 form that resolvers accept (inet_aton: 2130706433, 0177.0.0.1,
    0x7f.0.0.1, 127.1), so the error message can say which address a URL really means.
    Raises OutboundGuardError for a number that is no address (1.2.3.4.5, 256.0.0.1).
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            # A zone id ("%eth0", "%25eth0" in a URL) only picks an interface.
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise OutboundGuardError(
                f"{host} is not a valid IPv6 address", code=INVALID_URL
            ) from None
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing dot marks a fully qualified name and changes nothing here
    numbers = [_ipv4_number(part) for part in parts]
    if any(n is None for n in numbers):
        return None
    values: list[int] = [n for n in numbers if n is not None]
    if (
        len(values) > 4
        or any(v > 255 for v in values[:-1])
        or values[-1] >= 256 ** (5 - len(values))
    ):
        raise OutboundGuardError(f"{host} is not a valid IPv4 address", code=INVALID_URL)
    value = values[-1]
    for position, part in enumerate(values[:-1]):
        value += part << (8 * (3 - position))
    return ipaddress.IPv4Address(value)


_DIGITS = {16: set("0123456789abcdefABCDEF"), 8: set("01234567"), 10: set("0123456789")}


def _ipv4_number(part: str) -> int | None:
    # inet_aton's rules: 0x... is hex, a leading 0 is octal, anything else decimal.
    if part[:2].lower() == "0x":
        digits, base = part[2:] or "0", 16
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits or not set(digits) <= _DIGITS[base]:
        return None
    return int(digits, base)


def _is_localhost(name: str) -> bool:
    name = name.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def _vet_host(host: str, conf: _Config) -> IPAddress | None:
    """Checks what can be checked without DNS: the literal address (returned) or the name."""
    literal = parse_ip_literal(host)
    if literal is not None:
        reason = address_refusal(literal, allow_loopback=conf.allow_loopback)
        if reason:
            spelled = host.strip("[]").split("%", 1)[0]
            # Name the address an odd IPv4 spelling (2130706433, 0177.0.0.1) really means.
            message = (
                f"{host} is {literal}, {reason}"
                if isinstance(literal, ipaddress.IPv4Address) and spelled != str(literal)
                else f"{spelled} is {reason}"
            )
            raise OutboundGuardError(message, code=REFUSED_ADDRESS)
        return literal
    if _is_localhost(host) and not conf.allow_loopback:
        # Resolvers answer it from /etc/hosts or by rule (RFC 6761): no DNS answer to check.
        raise OutboundGuardError(
            f"{host} always means this machine, {LOOPBACK}", code=REFUSED_ADDRESS
        )
    return None


def _vet_answers(host: str, answers: Sequence[str], conf: _Config) -> list[IPAddress]:
    """The resolved addresses, all allowed; refuses the name if any one of them is refused.

    Refusing on any answer, not just the first, is what stops a name that lists a public and a
    private address from reaching the private one on a retry or another resolver's ordering.
    """
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            address = ipaddress.ip_address(answer.split("%", 1)[0])
        except ValueError:
            raise OutboundGuardError(
                f"{host} resolves to {answer!r}, which is not an IP address", code=UNRESOLVABLE_HOST
            ) from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundGuardError(f"{host} does not resolve to any address", code=UNRESOLVABLE_HOST)
    refused = [
        (address, reason)
        for address in addresses
        if (reason := address_refusal(address, allow_loopback=conf.allow_loopback))
    ]
    if refused:
        if len(addresses) == 1:
            message = f"{host} resolves to {addresses[0]}, {refused[0][1]}"
        else:
            listed = ", ".join(str(a) for a in addresses)
            why = "; ".join(f"{address} is {reason}" for address, reason in refused)
            message = f"{host} resolves to {listed}; {why}"
        raise OutboundGuardError(message, code=REFUSED_ADDRESS)
    return addresses


def system_resolve(host: str, port: int) -> list[str]:
    """The production resolver: every IPv4 and IPv6 address getaddrinfo gives for ``host``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


# getaddrinfo cannot be interrupted: it runs in a small pool so that the caller can stop
# waiting after the connect timeout, and a name whose DNS hangs does not hold the worker.
_resolver_pool: ThreadPoolExecutor | None = None
_resolver_pool_lock = threading.Lock()


def _forget_resolver_pool() -> None:
    # Threads do not survive fork (Celery's prefork pool): a child builds its own pool.
    global _resolver_pool, _resolver_pool_lock
    _resolver_pool, _resolver_pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_resolver_pool)


def _resolve(host: str, port: int, conf: _Config, timeout: float) -> Sequence[str]:
    global _resolver_pool
    with _resolver_pool_lock:
        if _resolver_pool is None:
            _resolver_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="outbound-dns")
        future = _resolver_pool.submit(conf.resolver, host, port)
    try:
        return future.result(timeout=timeout)
    except TimeoutError:  # also concurrent.futures.TimeoutError and socket.timeout
        raise _ResolveTimeout(f"resolving {host} took longer than {timeout:g} s") from None
    except (OSError, UnicodeError) as exc:  # UnicodeError: an empty or too long DNS label
        raise OutboundGuardError(
            f"{host} does not resolve to an address ({exc})", code=UNRESOLVABLE_HOST
        ) from exc


async def _aresolve(host: str, port: int, conf: _Config, timeout: float) -> Sequence[str]:
    try:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(conf.resolver, host, port, abandon_on_cancel=True)
    except TimeoutError:
        raise _ResolveTimeout(f"resolving {host} took longer than {timeout:g} s") from None
    except (OSError, UnicodeError) as exc:  # UnicodeError: an empty or too long DNS label
        raise OutboundGuardError(
            f"{host} does not resolve to an address ({exc})", code=UNRESOLVABLE_HOST
        ) from exc


# --- URL validation (forms, model fields, API serializers) ------------------------------------


def _vet_url(url: str, conf: _Config, *, resolve: bool) -> None:
    if not isinstance(url, str):
        raise OutboundGuardError("Enter a URL", code=INVALID_URL)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        # httpx rejects some numeric hosts (0177.0.0.1); still say which address they mean.
        host = _best_effort_host(url)
        if host:
            _vet_host(host, conf)
        raise OutboundGuardError(f"Not a valid URL: {exc}", code=INVALID_URL) from None
    scheme = parsed.scheme
    if scheme not in conf.allowed_schemes:
        allowed = " and ".join(sorted(conf.allowed_schemes, reverse=True))
        if not scheme:
            message = f"Enter a full URL starting with {allowed}://"
        else:
            message = f"Only {allowed} URLs are allowed, not {scheme}:"
        raise OutboundGuardError(message, code=BAD_SCHEME)
    if parsed.userinfo:
        raise OutboundGuardError(
            "The URL must not contain a user name or password; send credentials in a header",
            code=USERINFO,
        )
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise OutboundGuardError("The URL has no host", code=NO_HOST)
    if _vet_host(host, conf) is None and resolve:
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            answers = _resolve(host, port, conf, conf.connect_timeout)
        except _ResolveTimeout as exc:
            raise OutboundGuardError(str(exc), code=UNRESOLVABLE_HOST) from None
        _vet_answers(host, answers, conf)


def _best_effort_host(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None


def validate_outbound_url(url: str, *, resolve: bool = True) -> None:
    """Raises ValidationError unless ``url`` is a target the outbound client may call.

    Checks the scheme, that there is a host and no user name or password, and the address:
    an IP literal in any spelling, ``localhost``, and (with ``resolve``) every address the
    name resolves to now. The client checks again when it connects, so a name that changes
    its answers later is still refused then.
    """
    try:
        _vet_url(url, _config(), resolve=resolve)
    except OutboundGuardError as exc:
        raise ValidationError(str(exc), code=exc.code) from None


@deconstructible
class OutboundURLValidator:
    """For a model or form field's ``validators=[...]``: see :func:`validate_outbound_url`."""

    def __init__(self, *, resolve: bool = True) -> None:
        self.resolve = resolve

    def __call__(self, value: str) -> None:
        validate_outbound_url(value, resolve=self.resolve)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutboundURLValidator) and other.resolve == self.resolve

    def __hash__(self) -> int:
        return hash((type(self), self.resolve))


# --- The overall deadline ----------------------------------------------------------------------

# Monotonic time by which the current request must be done. Set by the transport (and by
# send()) for the task or thread making the request; every socket operation of the guarded
# streams is given at most the time that is left.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "bxos_outbound_deadline", default=None
)


def _budget(timeout: float | None, expired: type[Exception]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise expired("the overall deadline passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        budget = _budget(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, budget))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncDeadlineStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _budget(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        budget = _budget(timeout, httpcore.ConnectTimeout)
        return _AsyncDeadlineStream(
            await self._inner.start_tls(ssl_context, server_hostname, budget)
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBody(httpx.SyncByteStream):
    # The body is read after the transport returned: apply the request's deadline again.
    def __init__(self, inner: httpx.SyncByteStream, deadline: float) -> None:
        self._inner, self._deadline = inner, deadline

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._inner)
        while True:
            token = _deadline.set(self._deadline)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            finally:
                _deadline.reset(token)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _AsyncDeadlineBody(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, deadline: float) -> None:
        self._inner, self._deadline = inner, deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        while True:
            token = _deadline.set(self._deadline)
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            finally:
                _deadline.reset(token)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _resolve_budget(timeout: float | None, conf: _Config) -> float:
    # Resolving is part of connecting: it gets the connect timeout, capped by the deadline.
    budget = _budget(conf.connect_timeout if timeout is None else timeout, httpcore.ConnectTimeout)
    return conf.connect_timeout if budget is None else budget


def _request_deadline(conf: _Config) -> float:
    deadline = time.monotonic() + conf.total_timeout
    outer = _deadline.get()
    return deadline if outer is None else min(deadline, outer)


# --- The guarded network backends and transports ------------------------------------------------


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves, checks every address, and connects only to a checked address."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        conf = _config()
        literal = _vet_host(host, conf)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                answers = _resolve(host, port, conf, _resolve_budget(timeout, conf))
            except _ResolveTimeout as exc:
                raise httpcore.ConnectTimeout(str(exc)) from None
            addresses = _vet_answers(host, answers, conf)
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=_budget(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            return _DeadlineStream(stream)
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise OutboundGuardError("Unix sockets are not outbound targets", code=REFUSED_ADDRESS)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The asyncio twin of :class:`GuardedBackend` (through anyio, as httpx itself does)."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        conf = _config()
        literal = _vet_host(host, conf)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                answers = await _aresolve(host, port, conf, _resolve_budget(timeout, conf))
            except _ResolveTimeout as exc:
                raise httpcore.ConnectTimeout(str(exc)) from None
            addresses = _vet_answers(host, answers, conf)
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=_budget(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            return _AsyncDeadlineStream(stream)
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundGuardError("Unix sockets are not outbound targets", code=REFUSED_ADDRESS)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _check_scheme(url: httpx.URL, conf: _Config) -> None:
    # Also covers redirect hops: a receiver on https may not send us on to plain http when
    # only https is allowed.
    if url.scheme not in conf.allowed_schemes:
        raise OutboundGuardError(f"{url.scheme}: URLs are not allowed", code=BAD_SCHEME)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with our backend; applies the overall deadline to each request."""

    def __init__(self, *, verify: ssl.SSLContext | bool = True, limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # httpx 0.28's transport takes no network backend: replace its (unused) pool with one
        # that has ours. The assertion makes an httpx upgrade that changes this fail loudly.
        assert isinstance(self._pool, httpcore.ConnectionPool), "httpx changed HTTPTransport"
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        conf = _config()
        _check_scheme(request.url, conf)
        deadline = _request_deadline(conf)
        token = _deadline.set(deadline)
        try:
            response = super().handle_request(request)
        finally:
            _deadline.reset(token)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _DeadlineBody(response.stream, deadline)
        return response


class AsyncGuardedTransport(httpx.AsyncHTTPTransport):
    """The async twin of :class:`GuardedTransport`."""

    def __init__(self, *, verify: ssl.SSLContext | bool = True, limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        assert isinstance(self._pool, httpcore.AsyncConnectionPool), "httpx changed its transport"
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncGuardedBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        conf = _config()
        _check_scheme(request.url, conf)
        deadline = _request_deadline(conf)
        token = _deadline.set(deadline)
        try:
            response = await super().handle_async_request(request)
        finally:
            _deadline.reset(token)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _AsyncDeadlineBody(response.stream, deadline)
        return response


# --- Clients -------------------------------------------------------------------------------------


class OutboundClient(httpx.Client):
    """An httpx.Client whose every connection goes through the guard. Build with outbound_client."""


class OutboundAsyncClient(httpx.AsyncClient):
    """An httpx.AsyncClient whose every connection goes through the guard."""


# Options that would route requests around the guard transport.
_REFUSED_OPTIONS = frozenset({"transport", "mounts", "proxy", "trust_env", "app", "http2"})


def _client_options(conf: _Config, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    refused = _REFUSED_OPTIONS & opts.keys()
    if refused:
        raise TypeError(
            f"outbound clients do not take {', '.join(sorted(refused))}: every request must go "
            "through the guard transport"
        )
    transport = {
        "verify": opts.pop("verify", True),
        "limits": opts.pop(
            "limits", httpx.Limits(max_connections=conf.max_connections, keepalive_expiry=30.0)
        ),
    }
    headers = httpx.Headers(
        # identity: iter_raw then reads the body as sent, so a small compressed body can never
        # inflate past the cap in memory.
        {"User-Agent": conf.user_agent, "Accept-Encoding": "identity"}
    )
    headers.update(opts.pop("headers", None) or {})
    client = {
        "headers": headers,
        "timeout": opts.pop("timeout", _timeouts(conf, conf.total_timeout)),
        "follow_redirects": opts.pop("follow_redirects", False),
        "max_redirects": opts.pop("max_redirects", conf.max_redirects),
        # No proxies or certificate paths from the environment: with trust_env httpx would
        # mount a proxy transport for HTTP(S)_PROXY and the guard would check the proxy only.
        "trust_env": False,
        **opts,
    }
    return transport, client


def _timeouts(conf: _Config, total: float) -> httpx.Timeout:
    return httpx.Timeout(
        connect=min(conf.connect_timeout, total),
        read=min(conf.read_timeout, total),
        write=min(conf.write_timeout, total),
        pool=min(conf.connect_timeout, total),
    )


def outbound_client(**opts: Any) -> httpx.Client:
    """An httpx.Client with the guard transport, our timeouts and limits, and no redirects.

    Takes httpx.Client's options (headers, auth, base_url, timeout, follow_redirects, verify,
    limits...) except those that would bypass the guard (transport, mounts, proxy, trust_env).
    """
    conf = _config()
    transport, client = _client_options(conf, opts)
    return OutboundClient(transport=GuardedTransport(**transport), **client)


def outbound_async_client(**opts: Any) -> httpx.AsyncClient:
    """The asyncio twin of :func:`outbound_client`."""
    conf = _config()
    transport, client = _client_options(conf, opts)
    return OutboundAsyncClient(transport=AsyncGuardedTransport(**transport), **client)


# --- send() and asend(): one attempt, recorded, never raising for the network ------------------


@dataclass(frozen=True)
class OutboundResult:
    """What happened to one request: the answer (as much as was kept) or why there was none."""

    status_code: int | None
    headers: dict[str, str]
    body: bytes  # at most MAX_RESPONSE_BYTES; raw bytes, as sent (no content decoding)
    truncated: bool  # the receiver sent more than was kept
    duration_ms: int
    error_class: str | None = None  # a stable code, e.g. "timeout", "refused_address"
    error: str = ""  # for people: what went wrong

    @property
    def ok(self) -> bool:
        """A 2xx answer, read without error."""
        return self.error_class is None and 200 <= (self.status_code or 0) < 300

    def preview(self, *, limit: int = 2000) -> str:
        return body_preview(self.body, limit=limit, truncated=self.truncated)


def body_preview(body: bytes, *, limit: int = 2000, truncated: bool = False) -> str:
    """Safe text for an admin page or a log: decoded text, or a hex summary of a binary body.

    Control characters (terminal escapes) become U+FFFD; a body cut by the size cap may end in
    a partial UTF-8 sequence, which does not make it binary.
    """
    if not body:
        return ""
    text = body.decode("utf-8", errors="replace")
    if b"\x00" in body or text.count("\ufffd") > max(3, len(text) // 20):
        more = ", truncated" if truncated else ""
        return f"<binary body, {len(body)} bytes{more}: {body[:32].hex(' ')}>"
    text = "".join(
        c if c in "\t\n\r" or not (ord(c) < 32 or 127 <= ord(c) < 160) else "\ufffd" for c in text
    )
    if len(text) > limit:
        return text[:limit] + "…"
    return text + ("…" if truncated else "")


def _error_class(code: str) -> str:
    return INVALID_URL if code in (BAD_SCHEME, NO_HOST, USERINFO) else code


def _in_chain(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _describe(exc: Exception, *, deadline: float, total: float, conf: _Config) -> tuple[str, str]:
    """(error_class, message) for a failed attempt."""
    if isinstance(exc, OutboundGuardError):
        return _error_class(exc.code), str(exc)
    if isinstance(exc, httpx.TooManyRedirects):
        return TOO_MANY_REDIRECTS, str(exc)
    if isinstance(exc, httpx.TimeoutException):
        if time.monotonic() >= deadline - 0.01:
            return TIMEOUT, f"no complete answer within the overall deadline of {total:g} s"
        if isinstance(exc, httpx.ConnectTimeout):
            detail = str(exc) if "resolving" in str(exc) else ""
            return TIMEOUT, detail or f"timed out connecting (limit {conf.connect_timeout:g} s)"
        if isinstance(exc, httpx.ReadTimeout):
            return (
                TIMEOUT,
                f"timed out waiting for the answer (nothing for {conf.read_timeout:g} s)",
            )
        if isinstance(exc, httpx.WriteTimeout):
            return TIMEOUT, f"timed out sending the request (limit {conf.write_timeout:g} s)"
        return TIMEOUT, "timed out waiting for a free connection"
    tls = _in_chain(exc, (ssl.SSLError, ssl.CertificateError))
    if tls is not None:
        return TLS_ERROR, f"TLS failed: {tls}"
    reset = _in_chain(exc, (ConnectionResetError, ConnectionAbortedError))
    if reset is not None:
        return CONNECTION_RESET, f"the receiver reset the connection ({reset})"
    if isinstance(exc, httpx.ConnectError):
        return CONNECT_ERROR, f"could not connect: {exc}"
    if isinstance(exc, httpx.ProtocolError | httpx.DecodingError):
        return PROTOCOL_ERROR, str(exc) or type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return INVALID_URL, str(exc)
    return NETWORK_ERROR, str(exc) or type(exc).__name__


class _Attempt:
    """Collects one attempt's answer as it arrives, so a failure part-way keeps what came."""

    def __init__(self, conf: _Config, timeout: float | None) -> None:
        self.conf = conf
        self.total = conf.total_timeout if timeout is None else timeout
        self.started = time.monotonic()
        self.deadline = self.started + self.total
        self.status_code: int | None = None
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.truncated = False

    def answered(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.headers = dict(response.headers.items())

    def take(self, chunk: bytes) -> bool:
        """Keeps what fits under the cap; False once the cap is reached and reading should stop."""
        room = self.conf.max_response_bytes - len(self.body)
        if len(chunk) > room:
            self.body += chunk[:room]
            self.truncated = True
            return False
        self.body += chunk
        return True

    def result(self, exc: Exception | None = None) -> OutboundResult:
        error_class, error = (None, "")
        if exc is not None:
            error_class, error = _describe(
                exc, deadline=self.deadline, total=self.total, conf=self.conf
            )
        return OutboundResult(
            status_code=self.status_code,
            headers=self.headers,
            body=bytes(self.body),
            truncated=self.truncated,
            duration_ms=round((time.monotonic() - self.started) * 1000),
            error_class=error_class,
            error=error,
        )


def send(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | str | None = None,
    timeout: float | None = None,
    follow_redirects: bool = False,
    client: httpx.Client | None = None,
) -> OutboundResult:
    """Makes one request through the guard and records the outcome; never raises for the network.

    ``timeout`` is the overall deadline in seconds (default TOTAL_TIMEOUT), redirects included;
    connect and read timeouts are capped by it. Pass ``client`` (from outbound_client) to reuse
    connections. A 3xx answer is returned as it is unless ``follow_redirects``.
    """
    conf = _config()
    attempt = _Attempt(conf, timeout)
    try:
        _vet_url(url, conf, resolve=False)  # names are resolved and checked at connect time
    except OutboundGuardError as exc:
        return attempt.result(exc)
    if client is not None and not isinstance(client, OutboundClient):
        raise TypeError("send() needs a client from outbound_client(): it carries the guard")
    own = client is None
    active = client if client is not None else outbound_client()
    token = _deadline.set(attempt.deadline)
    try:
        with active.stream(
            method,
            url,
            headers=headers,
            content=content,
            timeout=_timeouts(conf, attempt.total),
            follow_redirects=follow_redirects,
        ) as response:
            attempt.answered(response)
            for chunk in response.iter_raw():
                if not attempt.take(chunk):
                    break  # closing the response drops the connection unread
        return attempt.result()
    except (httpx.HTTPError, OSError) as exc:
        return attempt.result(exc)
    finally:
        _deadline.reset(token)
        if own:
            active.close()


async def asend(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | str | None = None,
    timeout: float | None = None,
    follow_redirects: bool = False,
    client: httpx.AsyncClient | None = None,
) -> OutboundResult:
    """The asyncio twin of :func:`send`."""
    conf = _config()
    attempt = _Attempt(conf, timeout)
    try:
        _vet_url(url, conf, resolve=False)
    except OutboundGuardError as exc:
        return attempt.result(exc)
    if client is not None and not isinstance(client, OutboundAsyncClient):
        raise TypeError("asend() needs a client from outbound_async_client(): it carries the guard")
    own = client is None
    active = client if client is not None else outbound_async_client()
    token = _deadline.set(attempt.deadline)
    try:
        async with active.stream(
            method,
            url,
            headers=headers,
            content=content,
            timeout=_timeouts(conf, attempt.total),
            follow_redirects=follow_redirects,
        ) as response:
            attempt.answered(response)
            async for chunk in response.aiter_raw():
                if not attempt.take(chunk):
                    break
        return attempt.result()
    except (httpx.HTTPError, OSError) as exc:
        return attempt.result(exc)
    finally:
        _deadline.reset(token)
        if own:
            await active.aclose()
