"""The outbound HTTP guard: refused targets, and real receivers on loopback that misbehave.

No database. Every connection these tests open goes to 127.0.0.1 or ::1: an audit hook sees
each socket connect() and the autouse ``dialled`` fixture fails a test that dialled anything
else. Names resolve through a resolver the tests inject (OUTBOUND_HTTP["RESOLVER"]), never DNS.
Tests that talk to a receiver turn ALLOW_LOOPBACK on through pytest-django's ``settings``
fixture (the ``loopback`` fixture); the refused-target tables run with it off, as production.
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django import forms
from django.core.exceptions import ImproperlyConfigured, ValidationError

from bxos.common.aio import run_coroutine
from bxos.common.outbound import (
    OutboundGuardError,
    OutboundResult,
    OutboundURLValidator,
    asend,
    body_preview,
    outbound_async_client,
    outbound_client,
    send,
    validate_outbound_url,
)

# --- Every connect() is recorded: nothing may leave loopback ------------------------------------


class _Dials:
    recording: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "socket.connect" and _Dials.recording is not None:
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _Dials.recording.append(address[0])


# Audit hooks cannot be removed; this one only looks at one event and only while recording.
sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def dialled():
    _Dials.recording = seen = []
    yield seen
    _Dials.recording = None
    assert set(seen) <= {"127.0.0.1", "::1"}, f"a test dialled outside loopback: {seen}"


# --- Settings and the injected resolver --------------------------------------------------------


def _configure(settings, **values) -> None:
    settings.OUTBOUND_HTTP = {**settings.OUTBOUND_HTTP, **values}


NAMES = {
    "hooks.example.com": ["93.184.216.34"],
    "v6.example.com": ["2606:4700:4700::1111"],
    "internal.example": ["10.0.0.5"],
    "mixed.example": ["93.184.216.34", "10.0.0.5"],
    "metadata.example": ["169.254.169.254"],
    "cgnat.example": ["100.64.1.1"],
    "v6private.example": ["fd00::5"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "receiver.test": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],
}


class FakeDNS:
    """name -> addresses (or a function giving them); records every lookup."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str] | Callable[[], list[str]]] = dict(NAMES)
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer() if callable(answer) else list(answer)


@pytest.fixture
def dns(settings) -> FakeDNS:
    resolver = FakeDNS()
    _configure(settings, RESOLVER=resolver)
    return resolver


# Short timeouts keep the slow-receiver tests quick; the bounds asserted derive from them.
FAST = {"CONNECT_TIMEOUT": 1.0, "READ_TIMEOUT": 0.5, "TOTAL_TIMEOUT": 1.5}
GRACE = 2.0  # generous: a loaded CI machine must not fail these


@pytest.fixture
def loopback(settings, dns) -> dict:
    """Receivers run on 127.0.0.1: allow loopback (and only loopback) for this test."""
    _configure(settings, ALLOW_LOOPBACK=True, **FAST)
    return settings.OUTBOUND_HTTP


def call(mode: str, method: str, url: str, *, client_opts: dict | None = None, **kwargs):
    """send() or asend() (in a fresh event loop), optionally with a client of our own."""
    if mode == "sync":
        if client_opts is None:
            return send(method, url, **kwargs)
        with outbound_client(**client_opts) as client:
            return send(method, url, client=client, **kwargs)

    async def run() -> OutboundResult:
        if client_opts is None:
            return await asend(method, url, **kwargs)
        async with outbound_async_client(**client_opts) as client:
            return await asend(method, url, client=client, **kwargs)

    return run_coroutine(run())


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


# --- Refused targets (loopback NOT allowed) ----------------------------------------------------

REFUSED = [
    # Loopback, private, link-local, metadata
    ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
    ("http://127.255.255.254:8080/x", "127.255.255.254 is a loopback address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://10.1.2.3/", "10.1.2.3 is a private address (RFC 1918)"),
    ("http://172.16.0.1/", "172.16.0.1 is a private address (RFC 1918)"),
    ("http://192.168.1.1/", "192.168.1.1 is a private address (RFC 1918)"),
    ("http://[fd12:3456::1]/", "fd12:3456::1 is a private address (unique local"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is the cloud metadata address"),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254 is the cloud metadata address"),
    ("http://169.254.10.10/", "169.254.10.10 is a link-local address"),
    ("http://[fe80::1]/", "fe80::1 is a link-local address"),
    ("http://[fec0::1]/", "fec0::1 is a site-local address"),
    # CGNAT, unspecified, multicast, broadcast, reserved, special-purpose
    ("http://100.64.0.1/", "100.64.0.1 is a carrier-grade NAT address"),
    ("http://100.127.255.254/", "a carrier-grade NAT address"),
    ("http://0.0.0.0/", "0.0.0.0 is the unspecified address"),
    ("http://[::]/", ":: is the unspecified address"),
    ("http://0.1.2.3/", "0.1.2.3 is a 'this network' address"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("http://[ff02::1]/", "ff02::1 is a multicast address"),
    ("http://255.255.255.255/", "255.255.255.255 is the broadcast address"),
    ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
    ("http://198.18.0.1/", "198.18.0.1 is a benchmarking address"),
    ("http://[2001:2::1]/", "2001:2::1 is a benchmarking address"),
    ("http://192.0.2.10/", "192.0.2.10 is a documentation address"),
    ("http://203.0.113.5/", "203.0.113.5 is a documentation address"),
    ("http://[2001:db8::1]/", "2001:db8::1 is a documentation address"),
    ("http://192.0.0.8/", "an IETF protocol assignment address"),
    # IPv6 forms that carry an IPv4 address
    ("http://[::ffff:127.0.0.1]/", "an IPv4-mapped IPv6 address for 127.0.0.1, a loopback"),
    ("http://[::ffff:a9fe:a9fe]/", "IPv4-mapped IPv6 address for 169.254.169.254, the cloud"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped IPv6 address for 10.0.0.1, a private address"),
    ("http://[::127.0.0.1]/", "an IPv4-compatible IPv6 address (deprecated) for 127.0.0.1"),
    ("http://[::8.8.8.8]/", "an IPv4-compatible IPv6 address (deprecated) for 8.8.8.8"),
    ("http://[64:ff9b::169.254.169.254]/", "a NAT64 address for 169.254.169.254"),
    ("http://[2002:a00:1::1]/", "a 6to4 address for 10.0.0.1, a private address"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "a Teredo address for 192.0.2.45"),
    # Other spellings of an address: decimal, octal, hex, short forms
    ("http://2130706433/", "2130706433 is 127.0.0.1, a loopback address"),
    ("http://2852039166/", "2852039166 is 169.254.169.254, the cloud metadata address"),
    ("http://0177.0.0.1/", "0177.0.0.1 is 127.0.0.1, a loopback address"),
    ("http://017700000001/", "017700000001 is 127.0.0.1, a loopback address"),
    ("http://012.0.0.1/", "012.0.0.1 is 10.0.0.1, a private address"),
    ("http://0x7f.0.0.1/", "0x7f.0.0.1 is 127.0.0.1, a loopback address"),
    ("http://0x7f000001/", "0x7f000001 is 127.0.0.1, a loopback address"),
    ("http://0xA9FEA9FE/", "is 169.254.169.254, the cloud metadata address"),
    ("http://127.1/", "127.1 is 127.0.0.1, a loopback address"),
    ("http://10.1/", "10.1 is 10.0.0.1, a private address"),
    ("http://169.254.43518/", "169.254.43518 is 169.254.169.254, the cloud metadata"),
    # Names
    ("http://localhost/", "localhost always means this machine, a loopback address"),
    ("http://LOCALHOST.:8000/", "always means this machine"),
    ("http://api.localhost/", "api.localhost always means this machine"),
    ("https://internal.example/hook", "internal.example resolves to 10.0.0.5, a private address"),
    (
        "https://mixed.example/",
        "mixed.example resolves to 93.184.216.34, 10.0.0.5; 10.0.0.5 is a private address",
    ),
    ("http://metadata.example/", "resolves to 169.254.169.254, the cloud metadata address"),
    ("http://cgnat.example/", "cgnat.example resolves to 100.64.1.1, a carrier-grade NAT"),
    ("http://v6private.example/", "v6private.example resolves to fd00::5, a private address"),
    ("http://mapped.example/", "an IPv4-mapped IPv6 address for 127.0.0.1, a loopback address"),
]


@pytest.mark.parametrize("url, reason", REFUSED, ids=[u for u, _ in REFUSED])
def test_refused_target(url, reason, dns, settings):
    assert settings.OUTBOUND_HTTP["ALLOW_LOOPBACK"] is False
    with pytest.raises(ValidationError) as caught:
        validate_outbound_url(url)
    assert caught.value.code == "refused_address"
    assert reason in caught.value.messages[0]

    result = send("POST", url, content=b"{}")
    assert result.error_class == "refused_address"
    assert reason in result.error
    assert result.status_code is None and result.body == b""


INVALID = [
    ("ftp://files.example.com/x", "bad_scheme", "Only https and http URLs are allowed, not ftp"),
    ("file:///etc/passwd", "bad_scheme", "not file"),
    ("javascript:alert(1)", "bad_scheme", "not javascript"),
    ("hooks.example.com/webhook", "bad_scheme", "Enter a full URL starting with"),
    ("http:///path", "no_host", "The URL has no host"),
    ("https://user:secret@hooks.example.com/", "userinfo", "must not contain a user name"),
    ("http://1.2.3.4.5/", "invalid_url", "not a valid IPv4 address"),
    ("http://[::1/", "invalid_url", "Not a valid URL"),
    ("https://nowhere.example/", "unresolvable_host", "nowhere.example does not resolve"),
]


@pytest.mark.parametrize("url, code, message", INVALID, ids=[u for u, _, _ in INVALID])
def test_invalid_url_is_a_field_error_and_a_recorded_failure(url, code, message, dns):
    with pytest.raises(ValidationError) as caught:
        validate_outbound_url(url)
    assert caught.value.code == code
    assert message in caught.value.messages[0]

    result = send("GET", url)
    expected = "unresolvable_host" if code == "unresolvable_host" else "invalid_url"
    assert result.error_class == expected
    assert message in result.error


ACCEPTED = [
    "https://hooks.example.com/webhook",
    "http://hooks.example.com:8080/x?y=1",
    "https://v6.example.com/",
    "https://93.184.216.34/",
    "https://[2606:4700:4700::1111]/",
    "https://[::ffff:8.8.8.8]/",  # mapped, but what it carries is public
    "https://[64:ff9b::8.8.8.8]/",  # NAT64 for a public address
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_accepted_public_targets(url, dns):
    validate_outbound_url(url)  # resolve-only: nothing is sent to these


def test_resolve_false_checks_only_what_needs_no_dns(dns):
    validate_outbound_url("https://not-in-dns.example/", resolve=False)
    assert dns.lookups == []
    with pytest.raises(ValidationError, match="loopback"):
        validate_outbound_url("http://2130706433/", resolve=False)


def test_allow_loopback_opens_loopback_and_nothing_else(settings, dns):
    _configure(settings, ALLOW_LOOPBACK=True)
    for url in ["http://127.0.0.1:8000/", "http://[::1]/", "http://127.1/", "http://localhost/"]:
        dns.answers["localhost"] = ["127.0.0.1", "::1"]
        validate_outbound_url(url)
    for url in [
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.0.1/",
        "http://[fd00::1]/",
        "http://169.254.169.254/",
        "http://169.254.1.1/",
        "http://[fe80::1]/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",  # loopback carried in IPv6 stays refused
        "http://internal.example/",
        "http://metadata.example/",
    ]:
        with pytest.raises(ValidationError) as caught:
            validate_outbound_url(url)
        assert caught.value.code == "refused_address", url


def test_allowed_schemes_can_be_https_only(settings, dns):
    _configure(settings, ALLOWED_SCHEMES=["https"])
    validate_outbound_url("https://hooks.example.com/")
    with pytest.raises(ValidationError, match="Only https URLs are allowed, not http"):
        validate_outbound_url("http://hooks.example.com/")


def test_the_client_checks_at_connect_time_too(dns):
    # Not only send()'s up-front check: a plain request through the client is refused at
    # connect, with the same reason, and nothing is dialled.
    with outbound_client() as client:
        for url, reason in [
            ("http://2130706433/", "2130706433 is 127.0.0.1, a loopback address"),
            ("http://internal.example/", "internal.example resolves to 10.0.0.5"),
        ]:
            with pytest.raises(OutboundGuardError, match=re.escape(reason)) as caught:
                client.get(url)
            assert caught.value.code == "refused_address"

    async def run() -> None:
        async with outbound_async_client() as client:
            with pytest.raises(OutboundGuardError, match=re.escape("resolves to 169.254.169.254")):
                await client.get("https://metadata.example/")

    run_coroutine(run())


def test_form_field_and_validator(dns):
    class EndpointForm(forms.Form):
        url = forms.URLField(assume_scheme="https", validators=[OutboundURLValidator()])

    form = EndpointForm(data={"url": "https://internal.example/hook"})
    assert not form.is_valid()
    assert "internal.example resolves to 10.0.0.5, a private address" in form.errors["url"][0]
    assert EndpointForm(data={"url": "https://hooks.example.com/hook"}).is_valid()
    assert OutboundURLValidator(resolve=False).deconstruct() == (
        "bxos.common.outbound.OutboundURLValidator",
        (),
        {"resolve": False},
    )


def test_misconfiguration_fails_loudly(settings):
    _configure(settings, ALLOW_LOOPBAK=True)
    with pytest.raises(ImproperlyConfigured, match="ALLOW_LOOPBAK"):
        validate_outbound_url("https://hooks.example.com/")


def test_options_that_bypass_the_guard_are_refused():
    with pytest.raises(TypeError, match="proxy"):
        outbound_client(proxy="http://127.0.0.1:3128")
    with pytest.raises(TypeError, match="transport"):
        outbound_async_client(transport=httpx.AsyncHTTPTransport())
    with pytest.raises(TypeError, match="outbound_client"), httpx.Client() as plain:
        send("GET", "https://hooks.example.com/", client=plain)


def test_body_preview():
    assert body_preview(b"") == ""
    assert body_preview('{"ok": "\u00e9t\u00e9"}'.encode()) == '{"ok": "\u00e9t\u00e9"}'
    assert body_preview(b"red \x1b[31m text") == "red \ufffd[31m text"
    assert body_preview(b"a" * 50, limit=10) == "a" * 10 + "\u2026"
    assert body_preview(bytes(range(256))).startswith("<binary body, 256 bytes: 00 01 02")


# --- Real receivers on loopback ----------------------------------------------------------------

Answer = Callable[[socket.socket, "Receiver"], None]


class Receiver:
    """A raw HTTP/1.1 server on a loopback address: one request per connection, then close."""

    def __init__(self, answer: Answer, *, host: str = "127.0.0.1", tls=None) -> None:
        self.answer = answer
        self.tls = tls
        self.requests: list[bytes] = []
        self.sent = 0
        self.stop = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.base = f"{'https' if tls else 'http'}://{shown}:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.requests.append(_read_request(conn))
            self.answer(conn, self)
        except OSError:
            pass  # the client went away (timeouts, resets, truncation): expected here
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
            while len(body) < length:
                body += conn.recv(4096)
    return head + b"\r\n\r\n" + body


def _response(status: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answer_with(status: str, body: bytes = b"", *headers: str) -> Answer:
    return lambda conn, rx: conn.sendall(_response(status, body, *headers))


def answer_slowly(conn: socket.socket, rx: Receiver) -> None:
    if not rx.stop.wait(5):
        conn.sendall(_response("200 OK", b"late"))


def trickle_body(conn: socket.socket, rx: Receiver) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n")
    for _ in range(100):
        if rx.stop.wait(0.2):
            return
        conn.sendall(b"x")


def trickle_headers(conn: socket.socket, rx: Receiver) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(100):
        if rx.stop.wait(0.2):
            return
        conn.sendall(b"y")


HUGE = 64 * 1024 * 1024


def huge_body(conn: socket.socket, rx: Receiver) -> None:
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n".encode())
    chunk = b"\0" * 65536
    while rx.sent < HUGE:
        conn.sendall(chunk)
        rx.sent += len(chunk)


def reset_connection(conn: socket.socket, rx: Receiver) -> None:
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


@pytest.fixture
def serve():
    started: list[Receiver] = []

    def start(answer: Answer, **kwargs) -> Receiver:
        receiver = Receiver(answer, **kwargs)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.close()


@MODES
def test_200_with_body(mode, loopback, serve):
    rx = serve(answer_with("200 OK", b'{"ok":true}', "Content-Type: application/json"))
    result = call(mode, "POST", rx.base + "/hook", headers={"X-Sig": "v1"}, content=b'{"a":1}')
    assert (result.status_code, result.body, result.error_class) == (200, b'{"ok":true}', None)
    assert result.ok and not result.truncated
    assert result.headers["content-type"] == "application/json"
    assert result.duration_ms >= 0
    request = rx.requests[0].lower()
    assert request.startswith(b"post /hook http/1.1")
    assert b"x-sig: v1" in request and request.endswith(b'{"a":1}')
    assert b"accept-encoding: identity" in request  # so the raw body is what the cap counts
    assert b"user-agent: bx-os-integration-hub" in request


@MODES
def test_a_name_dials_the_checked_address_and_keeps_the_host_header(mode, loopback, serve, dns):
    rx = serve(answer_with("204 No Content"))
    result = call(mode, "GET", f"http://receiver.test:{rx.port}/ping")
    assert result.status_code == 204 and result.ok
    assert f"host: receiver.test:{rx.port}".encode() in rx.requests[0].lower()
    assert dns.lookups == ["receiver.test"]


def test_ipv6_loopback_receiver(loopback, serve):
    try:
        rx = serve(answer_with("200 OK", b"six"), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    assert call("sync", "GET", rx.base + "/").body == b"six"


@MODES
def test_slow_receiver_is_a_timeout_within_the_read_timeout(mode, loopback, serve):
    rx = serve(answer_slowly)
    started = time.monotonic()
    result = call(mode, "POST", rx.base + "/", content=b"{}")
    elapsed = time.monotonic() - started
    assert result.error_class == "timeout" and result.status_code is None
    assert "timed out" in result.error or "deadline" in result.error
    assert elapsed < loopback["READ_TIMEOUT"] + GRACE


@MODES
@pytest.mark.parametrize("answer", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_trickling_receiver_hits_the_overall_deadline(mode, answer, loopback, serve):
    # One byte every 0.2 s never trips the 0.5 s read timeout: only the deadline stops it.
    rx = serve(answer)
    started = time.monotonic()
    result = call(mode, "GET", rx.base + "/")
    elapsed = time.monotonic() - started
    assert result.error_class == "timeout"
    assert "overall deadline of 1.5 s" in result.error
    assert elapsed < loopback["TOTAL_TIMEOUT"] + GRACE
    if answer is trickle_body:
        assert result.status_code == 200  # what did arrive is kept
        assert set(result.body) <= {ord("x")}
    else:
        assert result.status_code is None


def test_timeout_argument_is_the_overall_deadline(loopback, serve):
    rx = serve(trickle_body)
    started = time.monotonic()
    result = send("GET", rx.base + "/", timeout=0.8)
    assert result.error_class == "timeout"
    assert "overall deadline of 0.8 s" in result.error
    assert time.monotonic() - started < 0.8 + GRACE


@MODES
def test_huge_body_is_capped_and_not_read(mode, loopback, serve):
    rx = serve(huge_body)
    tracemalloc.start()
    try:
        result = call(mode, "GET", rx.base + "/")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status_code == 200 and result.error_class is None
    assert result.truncated and len(result.body) == loopback.get("MAX_RESPONSE_BYTES", 16 * 1024)
    assert peak < 4 * 1024 * 1024  # a few read buffers, never the 64 MB body
    assert rx.sent < HUGE


@MODES
def test_binary_body_is_kept_as_bytes(mode, loopback, serve):
    payload = bytes(range(256)) * 4
    rx = serve(answer_with("200 OK", payload, "Content-Type: application/octet-stream"))
    result = call(mode, "GET", rx.base + "/")
    assert result.body == payload and not result.truncated
    assert result.preview().startswith("<binary body, 1024 bytes: 00 01 02 03")


@MODES
def test_connection_reset(mode, loopback, serve):
    rx = serve(reset_connection)
    result = call(mode, "POST", rx.base + "/", content=b"{}")
    assert result.error_class == "connection_reset", result.error
    assert result.status_code is None


@MODES
def test_nothing_listening_is_a_connect_error(mode, loopback):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    result = call(mode, "GET", f"http://127.0.0.1:{port}/")
    assert result.error_class == "connect_error"


@MODES
def test_redirects_are_not_followed_by_default(mode, loopback, serve, dialled):
    rx = serve(answer_with("302 Found", b"", "Location: http://169.254.169.254/latest/"))
    result = call(mode, "GET", rx.base + "/")
    assert result.status_code == 302 and result.error_class is None and not result.ok
    assert result.headers["location"] == "http://169.254.169.254/latest/"
    assert "169.254.169.254" not in dialled


@MODES
def test_redirect_to_the_metadata_address_is_refused(mode, loopback, serve, dialled):
    rx = serve(answer_with("302 Found", b"", "Location: http://169.254.169.254/latest/meta-data/"))
    result = call(mode, "GET", rx.base + "/", follow_redirects=True)
    assert result.error_class == "refused_address"
    assert "169.254.169.254 is the cloud metadata address" in result.error
    assert dialled == ["127.0.0.1"]  # the receiver only; never the metadata service


@MODES
def test_redirect_to_a_name_resolving_to_a_private_address_is_refused(
    mode, loopback, serve, dns, dialled
):
    rx = serve(answer_with("307 Temporary Redirect", b"", "Location: http://internal.example/x"))
    result = call(mode, "POST", rx.base + "/", content=b"{}", follow_redirects=True)
    assert result.error_class == "refused_address"
    assert "internal.example resolves to 10.0.0.5, a private address" in result.error
    assert dns.lookups == ["internal.example"]  # resolved at connect time, then refused
    assert dialled == ["127.0.0.1"]


@MODES
def test_redirect_to_an_allowed_target_is_followed_when_asked(mode, loopback, serve):
    final = serve(answer_with("200 OK", b"final"))
    first = serve(answer_with("302 Found", b"", f"Location: http://receiver.test:{final.port}/"))
    result = call(mode, "GET", first.base + "/", follow_redirects=True)
    assert (result.status_code, result.body) == (200, b"final")


@MODES
def test_redirect_loop_is_too_many_redirects(mode, loopback, serve):
    rx = serve(answer_with("302 Found", b"", "Location: /again"))
    result = call(mode, "GET", rx.base + "/", follow_redirects=True)
    assert result.error_class == "too_many_redirects"
    assert len(rx.requests) == 1 + loopback.get("MAX_REDIRECTS", 5)


@MODES
def test_dns_rebinding_is_refused_at_connect_time(mode, loopback, dns, dialled):
    answers = iter([["93.184.216.34"], ["10.0.0.5"]])
    dns.answers["rebind.example"] = lambda: next(answers)
    validate_outbound_url("https://rebind.example/hook")  # public when the form is saved
    result = call(mode, "POST", "https://rebind.example/hook", content=b"{}")
    assert result.error_class == "refused_address"
    assert "rebind.example resolves to 10.0.0.5, a private address" in result.error
    assert dns.lookups == ["rebind.example", "rebind.example"]
    assert dialled == []


# --- TLS: the certificate is checked against the name in the URL, not the dialled address ------


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    """A CA the client trusts, and a server certificate from it for receiver.test."""
    now = datetime.now(UTC)

    def build(subject: str, issuer: str, key, signer, *, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("Test CA", "Test CA", ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("receiver.test", "Test CA", key, ca_key, ca=False)

    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.create_default_context(
        cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    return server, client


@MODES
def test_tls_uses_the_url_name_for_sni_and_the_certificate(mode, loopback, serve, tls_pair):
    server_context, client_context = tls_pair
    names: list[str | None] = []
    server_context.sni_callback = lambda sslobj, name, ctx: names.append(name)
    rx = serve(answer_with("200 OK", b"secure"), tls=server_context)

    result = call(
        mode, "GET", f"https://receiver.test:{rx.port}/", client_opts={"verify": client_context}
    )
    assert (result.status_code, result.body) == (200, b"secure")
    assert names == ["receiver.test"]

    # other.test also resolves to 127.0.0.1, but the certificate is not for it.
    result = call(
        mode, "GET", f"https://other.test:{rx.port}/", client_opts={"verify": client_context}
    )
    assert result.error_class == "tls_error"
    assert "other.test" in result.error or "certificate" in result.error.lower()
