"""The HttpClientAgent servicer in-process: the ``sizes`` evaluator (hostile inputs included), server parsing,
SOCKS4a/5 CONNECT byte for byte, and real traffic to an in-process HTTP server, direct and through a proxy."""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import http_client_agent_pb2 as pb
from agents import http_client_agent_servicer as client
from agents.http_client_agent_servicer import HttpClientAgentServicer, SizeError, SizeExpression, parse_server
from agents.http_server_agent_servicer import BytesServer

DEADLINE = 30.0


def sizes(text: str, rng: random.Random | None = None) -> int:
    return SizeExpression(text).evaluate(rng or random.Random(7))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


# --- sizes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1000", 1000),
        ("", 1000),  # the default
        ("  250 ", 250),
        ("10 * 1024", 10240),
        ("2 ** 10 + 1", 1025),
        ("7 // 2 + 7 % 2", 4),
        ("10 / 4", 2),  # cast to int
        ("-5", 0),  # never below 0
        ("-(-5)", 5),
        ("abs(-3)", 3),
        ("min(5, 3) * max([1, 2])", 6),
        ("int(2.9)", 2),
        ("round(1234.5678, -2)", 1200),
        ("2.5e3", 2500),
    ],
)
def test_sizes_values(text: str, expected: int) -> None:
    assert sizes(text) == expected


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("random.randint(1000, 2000)", 1000, 2000),
        ("random.randrange(10, 20)", 10, 19),
        ("random.uniform(5, 6)", 5, 6),
        ("random.choice([100, 200, 300])", 100, 300),
        ("int(random.gauss(10000, 10))", 9000, 11000),
        ("random.expovariate(1 / 1000)", 0, 10**9),
        ("random.random() * 100", 0, 100),
        ("random.triangular(1, 3)", 1, 3),
        ("max(0, random.randint(1, 2) * 1000)", 1000, 2000),
    ],
)
def test_sizes_random_functions(text: str, low: int, high: int) -> None:
    rng = random.Random(1)
    values = {SizeExpression(text).evaluate(rng) for _ in range(200)}
    assert all(low <= v <= high for v in values), values


def test_sizes_use_the_given_generator() -> None:
    expression = SizeExpression("random.randint(1, 10**9)")
    assert expression.evaluate(random.Random(5)) == expression.evaluate(random.Random(5))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "calling __import__() is not allowed"),
        ("__import__('os').system('id')", "attribute access is not allowed"),
        ("().__class__.__bases__", "attribute access is not allowed"),
        ("random.__class__", "attribute access is not allowed"),
        ("random.seed(1)", "attribute access is not allowed"),
        ("random.randint.__globals__", "attribute access is not allowed"),
        ("(lambda: 1)()", "lambda is not allowed"),
        ("lambda: 1", "lambda is not allowed"),
        ("open('/etc/passwd')", "calling open() is not allowed"),
        ("eval('1')", "calling eval() is not allowed"),
        ("x", "the name 'x' is not allowed"),
        ("random", "the name 'random' is not allowed"),
        ("'a' * 10", "the constant 'a' is not allowed"),
        ("True + 1", "the constant True is not allowed"),
        ("[i for i in [1]]", "comprehensions is not allowed"),
        ("[1][0]", "subscripts is not allowed"),
        ("1 if 1 else 2", "if/else is not allowed"),
        ("1 < 2", "comparisons is not allowed"),
        ("1 << 100", "the operator LShift is not allowed"),
        ("~1", "the operator Invert is not allowed"),
        ("min(1, key=abs)", "a keyword argument is not allowed"),
        ("max(*[1, 2])", "a *argument is not allowed"),
        ("(y := 5)", "assignment is not allowed"),
        ("f'{1}'", "f-strings is not allowed"),
        ("{1: 2}", "dicts is not allowed"),
        ("1000\n import os", "not a valid expression"),
        ("1000; 2", "not a valid expression"),
    ],
)
def test_sizes_refuses_what_is_not_whitelisted(text: str, message: str) -> None:
    with pytest.raises(SizeError, match="^sizes .*" + re.escape(message)):
        SizeExpression(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9 ** 9 ** 9", "exponent 387420489 is too large"),
        ("2 ** 10 ** 10", "exponent 10000000000 is too large"),
        ("(-3) ** 100000", "exponent 100000 is too large"),
        ("2 ** 255 * 2 ** 255", "numbers grow past 256 bits"),
        ("[1] * 10 ** 9", "arithmetic on \\[1\\], which is not a number"),
        ("[1, 2] + [3]", "arithmetic on \\[1, 2\\], which is not a number"),
        ("round(5, -10 ** 20)", "round\\(\\)'s digits must be an integer up to 30"),
        ("1 / 0", "failed: ZeroDivisionError"),
        ("random.randint(10, 1)", "failed: ValueError"),
        ("random.choice([])", "failed: IndexError"),
        ("random.choice(5)", "random.choice\\(\\) takes one list"),
        ("max([])", "max\\(\\) takes numbers or a non-empty list"),
        ("int(1, 2)", "int\\(\\) takes one number"),
        ("1e308 * 10", "gives inf, not a finite number"),
        ("int(1e308 * 10)", "failed: OverflowError"),
        ("[1, 2]", "gives \\[1, 2\\], not a number"),
        ("abs([1])", "arithmetic on \\[1\\], which is not a number"),
    ],
)
def test_sizes_hostile_or_broken_values_fail_when_evaluated(text: str, message: str) -> None:
    with pytest.raises(SizeError, match=message):
        sizes(text)


def test_sizes_refuses_huge_literals_long_and_deep_expressions() -> None:
    with pytest.raises(SizeError, match="a number this large is not allowed"):
        SizeExpression(str(2**300))
    with pytest.raises(SizeError, match="too long"):
        SizeExpression("1+" * 600 + "1")
    with pytest.raises(SizeError, match=r"nested too deeply|not a valid expression"):
        SizeExpression("-" * 100 + "1")
    with pytest.raises(SizeError, match=r"nested too deeply|not a valid expression|cannot be parsed"):
        SizeExpression("(" * 300 + "1" + ")" * 300)


def test_sizes_messages_shorten_long_expressions() -> None:
    with pytest.raises(SizeError) as info:
        SizeExpression("1 + " * 100 + "x")
    assert "..." in str(info.value) and len(str(info.value)) < 400


_ALPHABET = "0123456789+-*/%()[], .e" + "randomintmaxbsuchoegu_"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(alphabet=_ALPHABET, max_size=40)))
def test_sizes_any_text_gives_a_size_or_a_size_error(text: str) -> None:
    try:
        value = SizeExpression(text).evaluate(random.Random(0))
    except SizeError:
        return
    assert isinstance(value, int) and value >= 0


# --- servers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("traf21", ("traf21", 8080)),
        ("traf21.smalltest.edgect:80", ("traf21.smalltest.edgect", 80)),
        ("198.18.0.11", ("198.18.0.11", 8080)),
        ("198.18.0.11:9000", ("198.18.0.11", 9000)),
        ("[2001:db8::1]:8443", ("2001:db8::1", 8443)),
        ("[2001:db8::1]", ("2001:db8::1", 8080)),
        ("2001:db8::1", ("2001:db8::1", 8080)),
        (" node01 ", ("node01", 8080)),
    ],
)
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty server name"),
        ("host:0", "port must be 1-65535"),
        ("host:99999", "port must be 1-65535"),
        ("host:http", "port must be 1-65535"),
        ("[2001:db8::1", "missing \\]"),
        ("[::1]x", "expected :port"),
        ("http://host/x", "give host or host:port, not a URL"),
        ("host/x", "not a host name or address"),
        ("a b", "not a host name or address"),
    ],
)
def test_parse_server_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_server(text)


# --- the servicer's RPCs, without a network ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names under .invalid fail at once, without asking this machine's resolver (no traffic leaves it)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def servicer() -> Iterator[HttpClientAgentServicer]:
    s = HttpClientAgentServicer()
    yield s
    s.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sizes": "__import__('os')"}, "calling __import__() is not allowed"),
        ({"sizes": "1/0"}, "ZeroDivisionError"),
        ({"rate_limit": -1}, "rate_limit must be >= 0"),
        ({"use_socks": True}, "use_socks needs socks_server"),
        ({"use_socks": True, "socks_server": "p", "socks_version": 3}, "socks_version must be 4 or 5"),
        ({"socks_port": 70000}, "socks_port must be 1-65535"),
        ({"local_port": -1}, "local_port must be 0-65535"),
    ],
)
def test_configure_refusals_are_responses(servicer: HttpClientAgentServicer, fields: Any, message: str) -> None:
    reply = servicer.Configure(pb.ConfigArgs(**fields), None)
    assert not reply.success
    assert message in reply.comment


def test_configure_defaults_and_comment(servicer: HttpClientAgentServicer) -> None:
    reply = servicer.Configure(pb.ConfigArgs(), None)
    assert reply.success and reply.comment.startswith("sizes 1000, 1 requests/s (sample sizes: 1000, 1000, 1000)")
    reply = servicer.Configure(
        pb.ConfigArgs(sizes="500", rate_limit=7, use_socks=True, socks_server="proxy", local_port=4000), None
    )
    assert reply.success
    assert reply.comment.startswith("sizes 500, 7 requests/s, via SOCKS5 proxy:1080, from local port 4000")


def test_rpcs_in_the_wrong_order_are_refused(servicer: HttpClientAgentServicer) -> None:
    reply = servicer.StopTraffic(pb.StopTrafficArgs(), None)
    assert (reply.success, reply.comment) == (False, "no traffic is running: call StartTraffic first")
    reply = servicer.StartTraffic(pb.StartTrafficArgs(), None)
    assert not reply.success and "servers is empty" in reply.comment
    reply = servicer.StartTraffic(pb.StartTrafficArgs(servers=["no-such-host.invalid"]), None)
    assert not reply.success and reply.comment.startswith("cannot resolve server no-such-host.invalid")
    reply = servicer.StartTraffic(pb.StartTrafficArgs(servers=["host:0"]), None)
    assert not reply.success and "port must be 1-65535" in reply.comment


def test_change_traffic_before_start_changes_the_configured_rate(servicer: HttpClientAgentServicer) -> None:
    assert servicer.Configure(pb.ConfigArgs(rate_limit=5), None).success
    reply = servicer.ChangeTraffic(pb.ChangeTrafficArgs(stepsize=3), None)
    assert reply.success and reply.comment == "rate 5 -> 8 requests/s (applies at StartTraffic)"
    reply = servicer.ChangeTraffic(pb.ChangeTrafficArgs(stepsize=-100), None)
    assert reply.success and reply.comment == "rate 8 -> 0 requests/s (applies at StartTraffic)"


# --- real traffic to an in-process HTTP server --------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[BytesServer]:
    server = BytesServer("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_traffic_reaches_the_server_and_follows_rate_changes(
    servicer: HttpClientAgentServicer, http_server: BytesServer
) -> None:
    port = http_server.server_address[1]
    assert servicer.Configure(pb.ConfigArgs(sizes="random.randint(100, 200)", rate_limit=50), None).success
    reply = servicer.StartTraffic(pb.StartTrafficArgs(servers=[f"127.0.0.1:{port}"]), None)
    assert reply.success and reply.comment == f"sending 50 requests/s to 127.0.0.1:{port}"
    assert not servicer.StartTraffic(pb.StartTrafficArgs(servers=[f"127.0.0.1:{port}"]), None).success
    assert "StopTraffic first" in servicer.Configure(pb.ConfigArgs(), None).comment
    wait_for(lambda: http_server.counters.requests >= 5, "5 requests")
    # Rate 0 pauses the traffic: once in-flight requests are done, the server's count stops moving.
    reply = servicer.ChangeTraffic(pb.ChangeTrafficArgs(stepsize=-50), None)
    assert reply.success and reply.comment == "rate 50 -> 0 requests/s"
    wait_for(lambda: servicer._traffic.in_flight == 0, "in-flight requests to finish")
    http_server.counters.wait_idle(DEADLINE)
    paused = http_server.counters.requests
    time.sleep(0.3)
    assert http_server.counters.requests == paused
    assert servicer.ChangeTraffic(pb.ChangeTrafficArgs(stepsize=50), None).success
    wait_for(lambda: http_server.counters.requests >= paused + 5, "traffic to resume")
    reply = servicer.StopTraffic(pb.StopTrafficArgs(), None)
    assert reply.success, reply.comment
    http_server.counters.wait_idle(DEADLINE)
    served = http_server.counters
    assert f": {served.requests} ok, 0 failed, {served.bytes} bytes received" in reply.comment
    assert 100 * served.requests <= served.bytes <= 200 * served.requests
    after = served.requests
    time.sleep(0.2)
    assert http_server.counters.requests == after  # stopped means stopped


def test_failed_requests_are_counted_with_the_last_error(
    servicer: HttpClientAgentServicer, http_server: BytesServer
) -> None:
    port = http_server.server_address[1]
    assert servicer.Configure(pb.ConfigArgs(sizes=str(2**31), rate_limit=50), None).success  # over the cap
    assert servicer.StartTraffic(pb.StartTrafficArgs(servers=[f"127.0.0.1:{port}"]), None).success
    wait_for(lambda: http_server.counters.errors >= 2, "2 refused requests")
    reply = servicer.StopTraffic(pb.StopTrafficArgs(), None)
    assert reply.success and " 0 ok, " in reply.comment
    assert reply.comment.endswith(
        f"last error: 127.0.0.1:{port}: HTTP 413 Request Entity Too Large from 127.0.0.1:{port}"
    )


# --- SOCKS ---------------------------------------------------------------------------------------------------


class FakeSocksProxy:
    """A SOCKS4/4a/5 CONNECT proxy for tests: records what clients sent and relays to the real target."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.peers: list[tuple[str, int]] = []
        self.connects: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _recv(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _until_nul(self, conn: socket.socket) -> bytes:
        data = b""
        while not data.endswith(b"\0"):
            data += self._recv(conn, 1)
        return data

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                version = self._recv(conn, 1)
                if version == b"\x04":
                    head = self._recv(conn, 7)
                    user = self._until_nul(conn)
                    port, ip = struct.unpack(">H", head[1:3])[0], head[3:7]
                    name = self._until_nul(conn) if ip[:3] == b"\0\0\0" else b""
                    self.requests.append(version + head + user + name)
                    host = name[:-1].decode() if name else socket.inet_ntoa(ip)
                    target = socket.create_connection((host, port), timeout=5)
                    conn.sendall(b"\x00\x5a" + b"\0" * 6)
                else:
                    greeting = version + self._recv(conn, 2)
                    conn.sendall(b"\x05\x00")
                    head = self._recv(conn, 4)
                    if head[3] == 3:
                        length = self._recv(conn, 1)
                        address = length + self._recv(conn, length[0])
                        host = address[1:].decode()
                    else:
                        address = self._recv(conn, 4 if head[3] == 1 else 16)
                        host = socket.inet_ntop(socket.AF_INET if head[3] == 1 else socket.AF_INET6, address)
                    port_bytes = self._recv(conn, 2)
                    self.requests.append(greeting + head + address + port_bytes)
                    port = struct.unpack(">H", port_bytes)[0]
                    target = socket.create_connection((host, port), timeout=5)
                    conn.sendall(b"\x05\x00\x00\x01" + b"\0" * 6)
            except OSError:
                return
            self.connects.append((host, port))
            with target:
                self._relay(conn, target)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        other = threading.Thread(target=pump, args=(b, a), daemon=True)
        other.start()
        pump(a, b)
        other.join(10)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy() -> Iterator[FakeSocksProxy]:
    p = FakeSocksProxy()
    yield p
    p.close()


@pytest.mark.parametrize(
    ("version", "host", "expected"),
    [
        (5, "127.0.0.1", b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + b"PORT"),
        (5, "localhost", b"\x05\x01\x00" + b"\x05\x01\x00\x03\x09localhost" + b"PORT"),
        (4, "127.0.0.1", b"\x04\x01PORT\x7f\x00\x00\x01\x00"),
        (4, "localhost", b"\x04\x01PORT\x00\x00\x00\x01\x00localhost\x00"),  # SOCKS4a: the proxy resolves
    ],
)
def test_fetch_through_socks_sends_rfc_requests(
    proxy: FakeSocksProxy, http_server: BytesServer, version: int, host: str, expected: bytes
) -> None:
    port = http_server.server_address[1]
    config = client.Config(
        pb.ConfigArgs(use_socks=True, socks_server="127.0.0.1", socks_port=proxy.port, socks_version=version)
    )
    assert client.fetch(config, host, port, 1234) == 1234
    assert proxy.requests == [expected.replace(b"PORT", struct.pack(">H", port))]
    http_server.counters.wait_idle(DEADLINE)  # the client may read the last byte before the server counts it
    assert http_server.counters.requests == 1


def test_socks_refusals_are_clear() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"\x05\x02")  # wants username/password
        with pytest.raises(OSError, match="SOCKS5 proxy wants authentication"):
            client.socks_connect(a, "h", 80, 5)
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"\x05\x00" + b"\x05\x05\x00\x01" + b"\0" * 6)
        with pytest.raises(OSError, match="could not connect to h:80: connection refused"):
            client.socks_connect(a, "h", 80, 5)
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"\x00\x5b" + b"\0" * 6)
        with pytest.raises(OSError, match="SOCKS4 proxy refused h:80"):
            client.socks_connect(a, "h", 80, 4)
    with pytest.raises(OSError, match="SOCKS4 cannot reach the IPv6 address"):
        client.socks_connect(None, "::1", 80, 4)


def test_traffic_through_socks_from_a_fixed_local_port(
    servicer: HttpClientAgentServicer, proxy: FakeSocksProxy, http_server: BytesServer
) -> None:
    with socket.socket() as probe:  # a free port to use as the source port
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    port = http_server.server_address[1]
    config = pb.ConfigArgs(
        sizes="100",
        rate_limit=20,
        use_socks=True,
        socks_server="127.0.0.1",
        socks_port=proxy.port,
        local_port=local_port,
    )
    assert servicer.Configure(config, None).success
    assert servicer.StartTraffic(pb.StartTrafficArgs(servers=[f"127.0.0.1:{port}"]), None).success
    wait_for(lambda: http_server.counters.requests >= 3, "3 requests through the proxy")
    reply = servicer.StopTraffic(pb.StopTrafficArgs(), None)
    assert reply.success and " 0 failed" in reply.comment, reply.comment
    assert {p for _, p in proxy.peers} == {local_port}
    assert set(proxy.connects) == {("127.0.0.1", port)}
    # Through a proxy, names are the proxy's to resolve: one this host cannot resolve is not refused up front.
    assert servicer.StartTraffic(pb.StartTrafficArgs(servers=["no-such-host.invalid"]), None).success
    assert servicer.StopTraffic(pb.StopTrafficArgs(), None).success
