# Servicer of http_client_agent.HttpClientAgent (proto/http_client_agent.proto): started from the `sshfleet
# generate` template and implemented by hand; `sshfleet generate` keeps it unless --force. It runs on the hosts,
# so it may use only the standard library, grpc and protobuf, on Python >= 3.6.
"""HTTP GETs of /bytes/<size> to a list of servers at a steady rate, optionally through a SOCKS proxy."""

import ast
import http.client
import ipaddress
import logging
import math
import operator
import os
import random
import socket
import struct
import threading
import time

try:  # package import on the controller, top-level import on the host
    from . import http_client_agent_pb2 as pb
    from . import http_client_agent_pb2_grpc as pb_grpc
except ImportError:
    import http_client_agent_pb2 as pb
    import http_client_agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_SIZES = "1000"
DEFAULT_RATE = 1
DEFAULT_HTTP_PORT = 8080
DEFAULT_SOCKS_PORT = 1080
REQUEST_TIMEOUT = 10.0  # connect, and each read, of one request
MAX_IN_FLIGHT = 16  # concurrent requests; a due request is skipped (and counted) when all are busy
REPORT_EVERY = 1.0  # seconds between reports to the controller while traffic runs (when it asked for them)
CONFIGURE_SAMPLES = 10  # evaluations of `sizes` that Configure tries before accepting it

_servicers = []  # for Shutdown()


def AddServicer(server, controller=None):
    servicer = HttpClientAgentServicer(controller)
    _servicers.append(servicer)
    pb_grpc.add_HttpClientAgentServicer_to_server(servicer, server)


def Shutdown():
    for servicer in _servicers:
        servicer.close()


# --- sizes: a small arithmetic language, evaluated by walking a whitelisted AST (never eval) ---------------


class SizeError(ValueError):
    """The sizes expression is refused or failed; the message says why."""


MAX_EXPRESSION = 1000  # characters
MAX_DEPTH = 40  # nesting of the syntax tree
MAX_INT_BITS = 256  # any integer along the way; keeps 9**9**9 and friends from eating the host
MAX_ROUND_DIGITS = 30

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS = {"min": min, "max": max, "abs": abs, "int": int, "round": round}
_RANDOM = ("randint", "randrange", "uniform", "choice", "gauss", "expovariate", "random", "triangular")
_ALLOWED = "numbers, + - * / // % **, lists, min() max() abs() int() round(), random.{}()".format(
    "() random.".join(_RANDOM)
)
_NODE_NAMES = {
    "Attribute": "attribute access",
    "Lambda": "lambda",
    "Subscript": "subscripts",
    "Compare": "comparisons",
    "BoolOp": "and/or",
    "IfExp": "if/else",
    "NamedExpr": "assignment",
    "ListComp": "comprehensions",
    "GeneratorExp": "generators",
    "JoinedStr": "f-strings",
    "Dict": "dicts",
    "Set": "sets",
}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class SizeExpression:
    """A parsed ``sizes`` expression; ``evaluate(rng)`` gives one request's size in bytes (>= 0).

    Only the whitelisted syntax is accepted (see ``_ALLOWED``); everything is checked when parsed, and numbers
    are checked again while evaluating, so no input can reach Python's eval, attributes or builtins, nor build
    huge numbers or lists.
    """

    def __init__(self, text):
        self.text = (text or "").strip() or DEFAULT_SIZES
        self.shown = repr(self.text if len(self.text) <= 60 else self.text[:57] + "...")  # for messages
        if len(self.text) > MAX_EXPRESSION:
            raise SizeError(f"sizes is too long ({len(self.text)} characters, at most {MAX_EXPRESSION})")
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as exc:
            raise SizeError(f"sizes {self.shown} is not a valid expression: {exc.msg}") from None
        except (ValueError, RecursionError, MemoryError):
            raise SizeError(f"sizes {self.shown} cannot be parsed") from None
        self._check(tree.body, 0)
        self._tree = tree.body

    def _refuse(self, what):
        raise SizeError(f"sizes {self.shown}: {what} is not allowed (allowed: {_ALLOWED})")

    def _check(self, node, depth):
        if depth > MAX_DEPTH:
            raise SizeError(f"sizes {self.shown} is nested too deeply")
        if isinstance(node, ast.Constant):
            if not _is_number(node.value):
                self._refuse(f"the constant {node.value!r}")
            if isinstance(node.value, int) and node.value.bit_length() > MAX_INT_BITS:
                self._refuse("a number this large")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                self._refuse(f"the operator {type(node.op).__name__}")
            self._check(node.left, depth + 1)
            self._check(node.right, depth + 1)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                self._refuse(f"the operator {type(node.op).__name__}")
            self._check(node.operand, depth + 1)
        elif isinstance(node, (ast.List, ast.Tuple)):
            for element in node.elts:
                self._check(element, depth + 1)
        elif isinstance(node, ast.Call):
            self._function_name(node.func)
            if node.keywords:
                self._refuse("a keyword argument")
            for arg in node.args:
                if isinstance(arg, ast.Starred):
                    self._refuse("a *argument")
                self._check(arg, depth + 1)
        elif isinstance(node, ast.Name):
            self._refuse(f"the name {node.id!r}")
        else:
            name = type(node).__name__
            self._refuse(_NODE_NAMES.get(name, name))

    def _function_name(self, func):
        if isinstance(func, ast.Name) and func.id in _FUNCTIONS:
            return func.id
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "random"
            and func.attr in _RANDOM
        ):
            return "random." + func.attr
        if isinstance(func, ast.Name):
            self._refuse(f"calling {func.id}()")
        if isinstance(func, ast.Attribute):
            self._refuse("attribute access")
        self._check(func, 0)  # refuses by what the callee is (a lambda, a subscript...)
        self._refuse("this call")

    def evaluate(self, rng):
        """One size in bytes: the expression's value, cast to int, never below 0. Raises SizeError."""
        try:
            value = self._eval(self._tree, rng)
        except SizeError:
            raise
        except (ArithmeticError, TypeError, ValueError, IndexError) as exc:
            raise SizeError(f"sizes {self.shown} failed: {type(exc).__name__}: {exc}") from None
        if not _is_number(value):
            raise SizeError(f"sizes {self.shown} gives {value!r}, not a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise SizeError(f"sizes {self.shown} gives {value!r}, not a finite number")
        return max(0, int(value))

    def _number(self, value):
        if not _is_number(value):
            raise SizeError(f"sizes {self.shown}: arithmetic on {value!r}, which is not a number")
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise SizeError(f"sizes {self.shown}: numbers grow past {MAX_INT_BITS} bits")
        return value

    def _eval(self, node, rng):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp):
            return self._number(_UNARY[type(node.op)](self._number(self._eval(node.operand, rng))))
        if isinstance(node, ast.BinOp):
            left = self._number(self._eval(node.left, rng))
            right = self._number(self._eval(node.right, rng))
            # Bound a power before computing it: |left| ** right has right * log2|left| bits.
            if (
                isinstance(node.op, ast.Pow)
                and isinstance(left, int)
                and isinstance(right, int)
                and abs(left) > 1
                and right * math.log2(abs(left)) > MAX_INT_BITS
            ):
                raise SizeError(f"sizes {self.shown}: exponent {right} is too large")
            return self._number(_BINARY[type(node.op)](left, right))
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._eval(element, rng) for element in node.elts]
        if isinstance(node, ast.Call):
            name = self._function_name(node.func)
            args = [self._eval(arg, rng) for arg in node.args]
            return self._call(name, args, rng)
        raise SizeError(f"sizes {self.shown}: cannot evaluate {type(node).__name__}")  # _check stops this

    def _call(self, name, args, rng):
        if name == "random.choice":
            if len(args) != 1 or not isinstance(args[0], list):
                raise SizeError(f"sizes {self.shown}: random.choice() takes one list, e.g. [500, 1000]")
            return rng.choice(args[0])
        if name in ("min", "max") and len(args) == 1:
            if not isinstance(args[0], list) or not args[0]:
                raise SizeError(f"sizes {self.shown}: {name}() takes numbers or a non-empty list")
            args = args[0]
        for arg in args:
            self._number(arg)
        if name == "int" and len(args) != 1:
            raise SizeError(f"sizes {self.shown}: int() takes one number")
        if name == "round" and len(args) == 2 and (not isinstance(args[1], int) or abs(args[1]) > MAX_ROUND_DIGITS):
            raise SizeError(f"sizes {self.shown}: round()'s digits must be an integer up to {MAX_ROUND_DIGITS}")
        if name.startswith("random."):
            return self._number(getattr(rng, name[len("random.") :])(*args))
        return self._number(_FUNCTIONS[name](*args))


# --- servers and connections --------------------------------------------------------------------------------


def parse_server(text):
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port); ValueError naming the problem."""
    text = text.strip()
    if not text:
        raise ValueError("empty server name")
    if "://" in text:
        raise ValueError(f"server {text!r}: give host or host:port, not a URL")
    port = DEFAULT_HTTP_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"server {text!r}: missing ]")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"server {text!r}: expected :port after ]")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    else:
        host = text  # a name, an IPv4 address, or a bare IPv6 address
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"server {text!r}: not a host name or address")
    return host, port


def _port(text, server):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"server {server!r}: port must be 1-65535")
    return int(text)


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def open_socket(host, port, local_port=0, timeout=REQUEST_TIMEOUT):
    """A TCP connection to host:port, from ``local_port`` when it is not 0."""
    last = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            if local_port:
                # A fixed source port: reuse it while the previous connection sits in TIME_WAIT.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last if last is not None else OSError(f"no address for {host}")


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("SOCKS proxy closed the connection")
        data += chunk
    return data


_SOCKS5_ERRORS = {
    1: "general failure",
    2: "not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


def socks_connect(sock, host, port, version):
    """Ask the SOCKS proxy at the other end of ``sock`` to CONNECT to host:port (no authentication).

    Version 4 sends an IPv4 address, or the name itself (SOCKS4a) so the proxy resolves it; version 5 sends
    the address or the name (RFC 1928). Raises OSError with the proxy's reason.
    """
    if version == 4:
        try:
            address = socket.inet_aton(host) if _is_ip(host) and "." in host else None
        except OSError:
            address = None
        if address is None and _is_ip(host):
            raise OSError(f"SOCKS4 cannot reach the IPv6 address {host}")
        request = struct.pack(">BBH", 4, 1, port) + (address or b"\0\0\0\1") + b"\0"
        if address is None:
            request += host.encode("idna") + b"\0"
        sock.sendall(request)
        reply = _recv_exact(sock, 8)
        if reply[1] != 0x5A:
            raise OSError(f"SOCKS4 proxy refused {host}:{port} (code 0x{reply[1]:02x})")
        return
    if version != 5:
        raise OSError(f"SOCKS version must be 4 or 5, not {version}")
    sock.sendall(b"\x05\x01\x00")
    greeting = _recv_exact(sock, 2)
    if greeting[0] != 5 or greeting[1] != 0:
        raise OSError(f"SOCKS5 proxy wants authentication (method 0x{greeting[1]:02x})")
    if _is_ip(host):
        ip = ipaddress.ip_address(host)
        target = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    else:
        name = host.encode("idna")
        if len(name) > 255:
            raise OSError(f"host name too long for SOCKS5: {host}")
        target = b"\x03" + bytes([len(name)]) + name
    sock.sendall(b"\x05\x01\x00" + target + struct.pack(">H", port))
    head = _recv_exact(sock, 4)
    if head[1] != 0:
        reason = _SOCKS5_ERRORS.get(head[1], f"code 0x{head[1]:02x}")
        raise OSError(f"SOCKS5 proxy could not connect to {host}:{port}: {reason}")
    # Skip the bound address, whose length depends on its type.
    kind = head[3]
    length = {1: 4, 4: 16}.get(kind)
    if length is None:
        length = _recv_exact(sock, 1)[0]
    _recv_exact(sock, length + 2)


class Config:
    """What Configure set (or the defaults), checked."""

    def __init__(self, request=None):
        self.sizes = SizeExpression(request.sizes if request is not None else "")
        rate = request.rate_limit if request is not None else 0
        if rate < 0:
            raise ValueError(f"rate_limit must be >= 0 requests per second, not {rate}")
        self.rate = rate or DEFAULT_RATE
        self.use_socks = bool(request is not None and request.use_socks)
        self.socks_server = request.socks_server if request is not None else ""
        self.socks_port = (request.socks_port if request is not None else 0) or DEFAULT_SOCKS_PORT
        self.socks_version = (request.socks_version if request is not None else 0) or 5
        self.local_port = request.local_port if request is not None else 0
        if self.use_socks and not self.socks_server:
            raise ValueError("use_socks needs socks_server")
        if self.socks_version not in (4, 5):
            raise ValueError(f"socks_version must be 4 or 5, not {self.socks_version}")
        if not 0 < self.socks_port < 65536:
            raise ValueError(f"socks_port must be 1-65535, not {self.socks_port}")
        if not 0 <= self.local_port < 65536:
            raise ValueError(f"local_port must be 0-65535, not {self.local_port}")

    def describe(self):
        via = ""
        if self.use_socks:
            via = f", via SOCKS{self.socks_version} {self.socks_server}:{self.socks_port}"
        local = f", from local port {self.local_port}" if self.local_port else ""
        return f"sizes {self.sizes.text}, {self.rate:g} requests/s{via}{local}"


def fetch(config, host, port, size):
    """GET http://host:port/bytes/size, through the proxy if configured; returns the body's length."""
    if config.use_socks:
        sock = open_socket(config.socks_server, config.socks_port, config.local_port)
        try:
            socks_connect(sock, host, port, config.socks_version)
        except BaseException:
            sock.close()
            raise
    else:
        sock = open_socket(host, port, config.local_port)
    conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT)
    conn.sock = sock  # http.client then uses our connection instead of opening its own
    try:
        conn.request("GET", f"/bytes/{size}", headers={"Connection": "close", "User-Agent": "sshfleet-http-client"})
        response = conn.getresponse()
        received = 0
        while True:
            chunk = response.read(1 << 16)
            if not chunk:
                break
            received += len(chunk)
        if response.status != 200:
            raise OSError(f"HTTP {response.status} {response.reason} from {host}:{port}")
        if received != size:
            raise OSError(f"short answer from {host}:{port}: {received} of {size} bytes")
        return received
    finally:
        conn.close()


class Traffic:
    """A scheduler thread that starts one request every 1/rate seconds, round robin over the servers."""

    def __init__(self, config, servers, rng, controller=None):
        self.config = config
        self.controller = controller
        self.servers = servers
        self.rng = rng
        self.rate = config.rate
        self.max_in_flight = 1 if config.local_port else MAX_IN_FLIGHT
        self.started = time.monotonic()
        self.requests = self.ok = self.failed = self.skipped = self.bytes = 0
        self.in_flight = 0
        self.last_error = ""
        self._stopping = False
        self._cond = threading.Condition()
        self._next = 0
        self._due = time.monotonic()
        self._thread = threading.Thread(target=self._schedule, name="http-traffic", daemon=True)
        self._thread.start()
        if controller is not None:
            threading.Thread(target=self._report, name="http-report", daemon=True).start()

    def _report(self):
        """Every REPORT_EVERY seconds while traffic runs, send the counts to the controller, from this thread of
        its own: a slow controller delays the next report, never the traffic."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, REPORT_EVERY)
                if self._stopping:
                    return
                report = pb.TrafficReport(
                    requests=self.requests,
                    ok=self.ok,
                    failed=self.failed,
                    bytes=self.bytes,
                    seconds=time.monotonic() - self.started,
                    rate=self.rate,
                )
            try:
                self.controller.Report(report, timeout=10, wait_for_ready=True)
            except Exception as exc:  # the controller going away must not stop the traffic
                log.debug("report to the controller failed: %s", exc)

    def _schedule(self):
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self.rate <= 0:
                    self._cond.wait()
                    self._due = time.monotonic()
                    continue
                if now < self._due:
                    self._cond.wait(self._due - now)
                    continue
                if self.in_flight < self.max_in_flight:
                    host, port = self.servers[self._next % len(self.servers)]
                    self._next += 1
                    self.in_flight += 1
                    self.requests += 1
                    threading.Thread(target=self._request, args=(host, port), name="http-request", daemon=True).start()
                else:
                    self.skipped += 1
                # After a stall (rate raised, host busy) do not burst to catch up: at most one second behind.
                self._due = max(self._due + 1.0 / self.rate, now - 1.0)

    def _request(self, host, port):
        error = None
        received = 0
        try:
            size = self.config.sizes.evaluate(self.rng)
            received = fetch(self.config, host, port, size)
        except (OSError, http.client.HTTPException, SizeError) as exc:
            error = f"{host}:{port}: {str(exc) or type(exc).__name__}"
        with self._cond:
            self.in_flight -= 1
            self.bytes += received
            if error is None:
                self.ok += 1
            else:
                self.failed += 1
                self.last_error = error
            self._cond.notify_all()
        if error is not None:
            log.debug("request failed: %s", error)

    def change(self, step):
        with self._cond:
            old, self.rate = self.rate, max(0, self.rate + step)
            if self.rate > 0:
                self._due = min(self._due, time.monotonic() + 1.0 / self.rate)
            self._cond.notify_all()
            return old, self.rate

    def stop(self, timeout=REQUEST_TIMEOUT + 2):
        """Stop scheduling and wait (up to ``timeout``) for requests in flight; returns a summary."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            while self.in_flight and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return self.summary()

    def summary(self):
        with self._cond:
            seconds = time.monotonic() - self.started
            text = (
                f"{self.requests} requests in {seconds:.1f}s: {self.ok} ok, {self.failed} failed, "
                f"{self.bytes} bytes received"
            )
            if self.skipped:
                text += f", {self.skipped} skipped (all {self.max_in_flight} connections busy)"
            if self.in_flight:
                text += f", {self.in_flight} still in flight"
            if self.last_error:
                text += f"; last error: {self.last_error}"
            return text


class HttpClientAgentServicer(pb_grpc.HttpClientAgentServicer):
    """Implements http_client_agent.HttpClientAgent on the host; one instance serves every call."""

    def __init__(self, controller=None):
        super().__init__()
        # A ready pb_grpc.HttpClientAgentControllerStub when the agent was given controller=, else None.
        self.controller = controller
        self._lock = threading.Lock()
        self._rng = random.Random(os.urandom(16))
        self._config = Config()
        self._traffic = None
        log.debug("HttpClientAgentServicer created.")

    def Configure(self, request, context):
        """Set request sizes, rate and proxy; optional (defaults: sizes "1000", 1 request per second, no proxy)."""
        log.debug("Invoking: Configure(%s)", str(request).replace("\n", " "))
        with self._lock:
            if self._traffic is not None:
                return _fail("traffic is running: StopTraffic first (ChangeTraffic changes the rate)")
            try:
                config = Config(request)
                samples = [config.sizes.evaluate(self._rng) for _ in range(CONFIGURE_SAMPLES)]
            except ValueError as exc:  # SizeError included
                return _fail(str(exc))
            self._config = config
            shown = ", ".join(str(s) for s in samples[:3])
            return _ok(f"{config.describe()} (sample sizes: {shown})")

    def StartTraffic(self, request, context):
        """Start sending requests to the servers in a background thread, round robin."""
        log.debug("Invoking: StartTraffic(servers=%r)", list(request.servers))
        with self._lock:
            if self._traffic is not None:
                return _fail("traffic is already running: StopTraffic first")
            if not request.servers:
                return _fail("servers is empty: give at least one host or host:port")
            try:
                servers = [parse_server(s) for s in request.servers]
            except ValueError as exc:
                return _fail(str(exc))
            if not self._config.use_socks:  # through a proxy, names are the proxy's to resolve
                for host, port in servers:
                    try:
                        socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
                    except OSError as exc:
                        return _fail(f"cannot resolve server {host}: {exc}")
            self._traffic = Traffic(self._config, servers, self._rng, self.controller)
            names = ", ".join(f"{host}:{port}" for host, port in servers)
            return _ok(f"sending {self._config.rate:g} requests/s to {names}")

    def StopTraffic(self, request, context):
        """Stop sending; the comment counts the requests, failures and bytes received."""
        log.debug("Invoking: StopTraffic()")
        with self._lock:
            traffic, self._traffic = self._traffic, None
            if traffic is None:
                return _fail("no traffic is running: call StartTraffic first")
            return _ok("stopped after " + traffic.stop())

    def ChangeTraffic(self, request, context):
        """Add stepsize to the rate (requests per second), also while traffic runs; the rate never goes below 0."""
        step = request.stepsize
        log.debug("Invoking: ChangeTraffic(stepsize=%r)", step)
        with self._lock:
            if self._traffic is not None:
                old, new = self._traffic.change(step)
                self._config.rate = new  # so the next StartTraffic keeps it
            else:
                old = self._config.rate
                new = self._config.rate = max(0, old + step)
            state = "" if self._traffic is not None else " (applies at StartTraffic)"
            return _ok(f"rate {old:g} -> {new:g} requests/s{state}")

    def close(self):
        with self._lock:
            traffic, self._traffic = self._traffic, None
        if traffic is not None:
            traffic.stop(timeout=2.0)


def _fail(comment):
    log.warning("%s", comment)
    return pb.Response(success=False, comment=comment)


def _ok(comment):
    log.info("%s", comment)
    return pb.Response(success=True, comment=comment)
