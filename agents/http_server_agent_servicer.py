# Servicer of http_server_agent.HttpServerAgent (proto/http_server_agent.proto): started from the `sshfleet
# generate` template and implemented by hand; `sshfleet generate` keeps it unless --force. It runs on the hosts,
# so it may use only the standard library, grpc and protobuf, on Python >= 3.6.
"""A threaded HTTP server on the host: GET /bytes/N answers N bytes."""

import logging
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:  # package import on the controller, top-level import on the host
    from . import http_server_agent_pb2 as pb
    from . import http_server_agent_pb2_grpc as pb_grpc
except ImportError:
    import http_server_agent_pb2 as pb
    import http_server_agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
MAX_BYTES = 1 << 30  # one answer; larger asks get 413
# Answers repeat one random block: the bytes must not compress away on the wire, and making them must be cheap.
_BLOCK = os.urandom(1 << 16)
_BYTES_PATH = re.compile(r"^/bytes/(\d{1,12})$")

_servicers = []  # for Shutdown()


def AddServicer(server):
    servicer = HttpServerAgentServicer()
    _servicers.append(servicer)
    pb_grpc.add_HttpServerAgentServicer_to_server(servicer, server)


def Shutdown():
    for servicer in _servicers:
        servicer.close()


class Counters:
    """Requests and bytes served, shared by the handler threads.

    ``active`` counts answers being written: StopServer waits for them, so that a request whose answer the client
    has read in full is always in the counts it reports.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self.requests = 0
        self.errors = 0
        self.bytes = 0
        self.active = 0

    def begin(self):
        with self._cond:
            self.active += 1

    def add(self, sent, error=False):
        with self._cond:
            self.active -= 1
            self.requests += 1
            self.bytes += sent
            if error:
                self.errors += 1
            self._cond.notify_all()

    def wait_idle(self, timeout):
        with self._cond:
            self._cond.wait_for(lambda: self.active == 0, timeout)


class BytesHandler(BaseHTTPRequestHandler):
    """GET /bytes/N: N bytes of application/octet-stream. GET /: a one-line description."""

    server_version = "sshfleet-http-server/1"
    # HTTP/1.0 (the default): one request per connection, so StopServer leaves no idle keep-alive behind.
    timeout = 30  # seconds a client may stall mid-request

    def do_GET(self):
        self.server.counters.begin()
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._answer_text(200, "sshfleet HttpServerAgent: GET /bytes/N answers N bytes\n")
            return
        match = _BYTES_PATH.match(path)
        if not match:
            self._answer_text(404, "not found: use /bytes/N\n", error=True)
            return
        size = int(match.group(1))
        if size > MAX_BYTES:
            self._answer_text(413, f"at most {MAX_BYTES} bytes per request\n", error=True)
            return
        sent = 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            while sent < size:
                chunk = _BLOCK[: min(len(_BLOCK), size - sent)]
                self.wfile.write(chunk)
                sent += len(chunk)
        finally:
            self.server.counters.add(sent, error=sent < size)

    def _answer_text(self, status, text, error=False):
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        finally:
            self.server.counters.add(len(body), error=error)

    def log_message(self, format, *args):  # the default writes to stderr, which nobody reads on the host
        log.debug("%s %s", self.address_string(), format % args)


class BytesServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not hold up StopServer
    allow_reuse_address = True  # restart on the same port while old connections sit in TIME_WAIT

    def __init__(self, address, port):
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.counters = Counters()
        super().__init__((address, port), BytesHandler)

    def handle_error(self, request, client_address):
        # The default prints a traceback to stderr; a client that hangs up mid-answer is routine here.
        log.debug("connection from %s ended badly", client_address, exc_info=True)


class HttpServerAgentServicer(pb_grpc.HttpServerAgentServicer):
    """Implements http_server_agent.HttpServerAgent on the host; one instance serves every call."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        log.debug("HttpServerAgentServicer created.")

    def StartServer(self, request, context):
        """Start serving on port (default 8080) on every interface of the host."""
        port = request.port or DEFAULT_PORT
        address = request.address or "0.0.0.0"
        log.debug("Invoking: StartServer(port=%r, address=%r)", request.port, request.address)
        with self._lock:
            if self._server is not None:
                host, bound = self._server.server_address[:2]
                return _fail(f"already serving on {host}:{bound}: StopServer first")
            if not 0 < port < 65536:
                return _fail(f"port must be 1-65535, not {port}")
            try:
                server = BytesServer(address, port)
            except (OSError, OverflowError) as exc:
                return _fail(f"cannot listen on {address}:{port}: {exc}")
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, name="http-server", daemon=True)
            self._thread.start()
            return _ok(f"serving on {address}:{port}")

    def StopServer(self, request, context):
        """Stop the server; the comment says how many requests and bytes it served."""
        log.debug("Invoking: StopServer()")
        with self._lock:
            server = self._stop()
            if server is None:
                return _fail("no server is running: call StartServer first")
            counters = server.counters
            errors = f" ({counters.errors} failed)" if counters.errors else ""
            return _ok(f"stopped; served {counters.requests} requests{errors}, {counters.bytes} bytes")

    def _stop(self):
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # waits for serve_forever to return; handler threads are daemons
            server.server_close()
            server.counters.wait_idle(5)
            self._thread.join(5)
        return server

    def close(self):
        with self._lock:
            self._stop()


def _fail(comment):
    log.warning("%s", comment)
    return pb.Response(success=False, comment=comment)


def _ok(comment):
    log.info("%s", comment)
    return pb.Response(success=True, comment=comment)
