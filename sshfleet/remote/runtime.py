# The servicer runtime on the host, shipped in every agent bundle as the top-level module `sshfleet_runtime`.
# Standard library + grpcio + protobuf only; never imports sshfleet. Python >= 3.6.
#
# Life cycle: bootstrap.py calls serve(); we bind 127.0.0.1 on an ephemeral port, print READY, then live as long
# as the SSH channel that started us: EOF on stdin, a "STOP" line, or no heartbeat for `liveness` seconds stops
# the server, kills our process group (what the servicer started) and removes the session directory.
import collections
import importlib
import logging
import os
import shutil
import signal
import struct
import sys
import threading
import time
import traceback
from _operator import _compare_digest as compare_digest  # hmac's, without hmac's ~5 ms import of OpenSSL
from concurrent import futures

import grpc

TOKEN_KEY = "x-sshfleet-token"
TRACEBACK_KEY = "x-sshfleet-traceback-bin"
CALLS_METHOD = "/sshfleet.Runtime/Calls"
# Frames of a Calls stream (see Calls below). Request: call id, timeout in seconds (0: none), length of the
# method path; then the path and the serialized request. Reply: call id, status code, length of the details,
# length of the traceback; then the details, the traceback and the serialized response.
REQUEST_HEAD = struct.Struct("!IdH")
REPLY_HEAD = struct.Struct("!IHII")

log = logging.getLogger("sshfleet.remote")


def _abort_unauthenticated(request, context):
    context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "sshfleet: this servicer only answers the controller that started it"
    )


def _code_of(context):
    code = getattr(context, "code", None)
    return code() if callable(code) else None


def _servicer_traceback():
    """The traceback of the exception being handled, without our own wrapper frame: the user wants to see
    where *their* servicer raised."""
    etype, value, tb_obj = sys.exc_info()
    tb = "".join(traceback.format_exception(etype, value, tb_obj.tb_next if tb_obj else None))
    log.error("servicer raised:\n%s", tb)
    return tb


def _report(context, exc):
    """Turn a servicer exception into UNKNOWN with the remote traceback in trailing metadata."""
    tb = _servicer_traceback()
    context.set_trailing_metadata(((TRACEBACK_KEY, tb.encode("utf-8", "replace")),))
    context.abort(grpc.StatusCode.UNKNOWN, "%s: %s" % (type(exc).__name__, exc))


def _guard_unary(fn):
    def handler(request, context):
        try:
            return fn(request, context)
        except Exception as exc:
            if _code_of(context) not in (None, grpc.StatusCode.OK):
                raise  # the servicer aborted on purpose
            _report(context, exc)

    return handler


def _guard_stream(fn):
    def handler(request, context):
        try:
            for item in fn(request, context):
                yield item
        except Exception as exc:
            if _code_of(context) not in (None, grpc.StatusCode.OK):
                raise
            _report(context, exc)

    return handler


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuse every call that does not carry the session secret; report servicer exceptions with tracebacks."""

    def __init__(self, secret):
        self._secret = secret.encode("ascii")
        self._refuse = grpc.unary_unary_rpc_method_handler(_abort_unauthenticated)
        self._cache = {}

    def intercept_service(self, continuation, details):
        token = None
        for key, value in details.invocation_metadata or ():
            if key == TOKEN_KEY:
                token = value
                break
        if token is None or not compare_digest(token.encode("ascii", "replace"), self._secret):
            log.warning("refused %s: missing or wrong session token", details.method)
            return self._refuse
        handler = self._cache.get(details.method)
        if handler is None:
            handler = continuation(details)
            if handler is None:
                return None
            if details.method == CALLS_METHOD:
                pass  # Calls reports each call's exceptions itself
            elif handler.unary_unary:
                handler = handler._replace(unary_unary=_guard_unary(handler.unary_unary))
            elif handler.stream_unary:
                handler = handler._replace(stream_unary=_guard_unary(handler.stream_unary))
            elif handler.unary_stream:
                handler = handler._replace(unary_stream=_guard_stream(handler.unary_stream))
            elif handler.stream_stream:
                handler = handler._replace(stream_stream=_guard_stream(handler.stream_stream))
            self._cache[details.method] = handler
        return handler


class _Aborted(Exception):
    """Raised by CallContext.abort(), like grpc's own context.abort() raises in a sync handler."""


class CallContext:
    """The ServicerContext a servicer method sees for a call carried on a Calls stream.

    Status, details, deadline and callbacks are this call's own; the rest (metadata, peer, auth) is the
    stream's. Callbacks run when the call ends: it returned, or its stream was cancelled (the controller does
    that when the call's deadline passes) or broke.
    """

    def __init__(self, stream_context, timeout):
        self._stream = stream_context
        self._deadline = time.monotonic() + timeout if timeout > 0 else None
        self._code = None
        self._details = ""
        self._trailing = ()
        self._callbacks = []
        self._ended = False
        self._lock = threading.Lock()

    def abort(self, code, details):
        self._code, self._details = code, details
        raise _Aborted(details)

    def abort_with_status(self, status):
        self._trailing = tuple(status.trailing_metadata or ())
        self.abort(status.code, status.details)

    def set_code(self, code):
        self._code = code

    def set_details(self, details):
        self._details = details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def set_trailing_metadata(self, trailing_metadata):
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self):
        return self._trailing

    def send_initial_metadata(self, initial_metadata):
        pass  # a call on a stream has no headers of its own

    def time_remaining(self):
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self):
        if self._ended or not self._stream.is_active():
            return False
        return self._deadline is None or time.monotonic() < self._deadline

    def add_callback(self, callback):
        with self._lock:
            if self._ended:
                return False
            self._callbacks.append(callback)
            return True

    def cancel(self):
        self._stream.cancel()

    def end(self):
        with self._lock:
            if self._ended:
                return
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a call's callback raised")

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _Details:
    """What a generic handler's service() looks at to pick a method handler."""

    def __init__(self, method, invocation_metadata):
        self.method = method
        self.invocation_metadata = invocation_metadata


class Calls:
    """Unary calls carried on long-lived streams: one message each way per call.

    A gRPC unary call costs the Python server a dispatch through its completion queue, a thread hand-off and
    the interceptor pipeline; a message on an open stream costs a fraction of that (bench/profile/FINDINGS.md).
    The controller keeps an idle stream per host and sends each unary call as one frame on it; this handler
    runs the servicer's own method handler inline, one call at a time per stream (the controller opens
    another stream for concurrent calls). The session token is checked once, when the stream opens.
    """

    def __init__(self):
        self._registered = {}
        self._generic = []
        self._handlers = {}

    def add_generic_rpc_handlers(self, handlers):
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers):
        self._registered[service] = handlers

    def _lookup(self, method, metadata):
        handler = self._handlers.get(method)
        if handler is None:
            service, _, name = method[1:].partition("/")
            handler = self._registered.get(service, {}).get(name)
            for generic in self._generic:
                if handler is not None:
                    break
                handler = generic.service(_Details(method, metadata))
            if handler is not None:
                self._handlers[method] = handler
        return handler

    def handler(self, request_iterator, context):
        current = [None]

        def stream_ended():
            call = current[0]
            if call is not None:
                call.end()

        context.add_callback(stream_ended)
        metadata = context.invocation_metadata()
        for frame in request_iterator:
            yield self._dispatch(frame, context, metadata, current)

    def _dispatch(self, frame, stream_context, metadata, current):
        call_id, timeout, path_len = REQUEST_HEAD.unpack_from(frame)
        start = REQUEST_HEAD.size
        method = bytes(frame[start : start + path_len]).decode("utf-8")
        payload = frame[start + path_len :]
        handler = self._lookup(method, metadata)
        if handler is None or handler.unary_unary is None:
            return _reply(call_id, grpc.StatusCode.UNIMPLEMENTED, "sshfleet: no unary method %s here" % method)
        context = current[0] = CallContext(stream_context, timeout)
        try:
            request = handler.request_deserializer(payload) if handler.request_deserializer else payload
            response = handler.unary_unary(request, context)
            if context._code not in (None, grpc.StatusCode.OK):
                return _reply(call_id, context._code, context._details)
            if response is None:
                log.error("%s returned None", method)
                return _reply(call_id, grpc.StatusCode.INTERNAL, "%s returned None instead of a reply" % method)
            data = handler.response_serializer(response) if handler.response_serializer else response
            return _reply(call_id, grpc.StatusCode.OK, "", b"", data)
        except _Aborted:
            return _reply(call_id, context._code, context._details)
        except Exception as exc:
            if context._code not in (None, grpc.StatusCode.OK):
                return _reply(call_id, context._code, context._details)  # set_code() then raise: grpc does this
            tb = _servicer_traceback()
            return _reply(call_id, grpc.StatusCode.UNKNOWN, "%s: %s" % (type(exc).__name__, exc), tb.encode())
        finally:
            current[0] = None
            context.end()


def _reply(call_id, code, details, tb=b"", payload=b""):
    details_bytes = (details or "").encode("utf-8", "replace")
    head = REPLY_HEAD.pack(call_id, code.value[0], len(details_bytes), len(tb))
    return b"".join((head, details_bytes, tb, payload))


_async_loop = None
_async_lock = threading.Lock()


def _loop():
    """The event loop that runs the servicer's ``async def`` methods, on a thread of its own (made on first use:
    asyncio is imported only by servicers that need it)."""
    global _async_loop
    with _async_lock:
        if _async_loop is None:
            import asyncio

            _async_loop = asyncio.new_event_loop()
            threading.Thread(target=_async_loop.run_forever, name="servicer-asyncio", daemon=True).start()
        return _async_loop


def _await(coro, context):
    """Run ``coro`` on the servicer's loop and wait for it; the RPC ending (deadline, cancel) cancels it."""
    import asyncio

    future = asyncio.run_coroutine_threadsafe(coro, _loop())
    context.add_callback(future.cancel)
    return future.result()


class _AsyncRequests:
    """A client stream's requests as an async iterator, read off the loop (the grpc iterator blocks)."""

    def __init__(self, requests):
        self._requests = requests

    def __aiter__(self):
        return self

    async def __anext__(self):
        import asyncio

        item = await asyncio.get_event_loop().run_in_executor(None, next, self._requests, _END)
        if item is _END:
            raise StopAsyncIteration
        return item


_END = object()


# How long every worker may stay stuck past its call's deadline, with calls being refused meanwhile, before the
# servicer gives up and exits so that the controller starts a fresh one on the next call (issue: a host whose
# workers all ignore their deadlines used to stay wedged until a new agent was made).
STUCK_RESTART = 10.0


class Workers:
    """The agent's ``max_workers`` slots for blocking servicer code, and what holds each: a call and its deadline.

    ``wedged()`` tells when every slot has been held past its call's deadline for ``STUCK_RESTART`` seconds while
    another call was refused: the servicer then exits (see Session.watch_liveness), the controller's lifeline sees
    its channel close, and the next call restarts it.
    """

    def __init__(self, count):
        self.count = count
        self._slots = threading.BoundedSemaphore(count)
        self._lock = threading.Lock()
        self._held = {}  # token -> the call's deadline (time.monotonic()), None when it has none
        self._next = 0
        self.refused_at = None

    def _stuck(self):
        now = time.monotonic()
        with self._lock:
            return sum(1 for d in self._held.values() if d is not None and d < now)

    def acquire(self, context):
        remaining = context.time_remaining()
        # When every worker is held by a call already past its deadline, waiting is pointless: say so at once
        # (waiting out the deadline, the controller's own deadline would hide why with DEADLINE_EXCEEDED).
        got = self._slots.acquire(blocking=False)
        if not got and self._stuck() < self.count:
            got = self._slots.acquire(timeout=max(0.0, remaining) if remaining is not None else None)
        if not got:
            stuck = self._stuck()
            with self._lock:
                self.refused_at = time.monotonic()
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "every servicer worker stayed busy past the deadline (%d of %d held by calls past their own "
                "deadlines; the servicer restarts once all of them are stuck for %gs)"
                % (stuck, self.count, STUCK_RESTART),
            )
        with self._lock:
            self._next += 1
            token = self._next
            self._held[token] = None if remaining is None else time.monotonic() + remaining
        return token

    def release(self, token):
        with self._lock:
            self._held.pop(token, None)
        self._slots.release()

    def wedged(self, now=None):
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._held) < self.count or self.refused_at is None:
                return False
            if any(d is None or now - d < STUCK_RESTART for d in self._held.values()):
                return False
            return self.refused_at > max(self._held.values())


def _limited(behavior, limit, streaming_reply):
    """``behavior`` run only while it holds one of the worker slots of ``limit`` (a Workers: the agent's
    max_workers), waiting for one no longer than the call's deadline."""

    if streaming_reply:

        def stream(request, context):
            token = limit.acquire(context)
            try:
                for reply in behavior(request, context):
                    yield reply
            finally:
                limit.release(token)

        return stream

    def unary(request, context):
        token = limit.acquire(context)
        try:
            return behavior(request, context)
        finally:
            limit.release(token)

    return unary


def _adapt(handler, limit):
    """``handler`` as grpc's thread pool can call it: a blocking servicer method runs on the pool, holding one of
    the agent's ``max_workers`` slots (``limit``); an ``async def`` one (or an async generator) runs on the
    servicer's one event loop, so it needs no slot."""
    import inspect

    if handler is None:
        return handler
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind, None)
        if behavior is None:
            continue
        streaming_request = kind.startswith("stream")
        if inspect.iscoroutinefunction(behavior):

            def unary(request, context, _fn=behavior, _stream=streaming_request):
                return _await(_fn(_AsyncRequests(request) if _stream else request, context), context)

            return handler._replace(**{kind: unary})
        if inspect.isasyncgenfunction(behavior):

            def stream(request, context, _fn=behavior, _stream=streaming_request):
                agen = _fn(_AsyncRequests(request) if _stream else request, context)
                while True:
                    try:
                        yield _await(agen.__anext__(), context)
                    except StopAsyncIteration:
                        return

            return handler._replace(**{kind: stream})
        return handler._replace(**{kind: _limited(behavior, limit, kind.endswith("stream"))})
    return handler


class _Registrar:
    """Stands in for the server in AddServicer(): registers with the server and keeps the handlers for Calls."""

    def __init__(self, server, calls, workers):
        self._server = server
        self._calls = calls
        self.workers = self._limit = Workers(workers)  # blocking servicer code running at once

    def add_generic_rpc_handlers(self, handlers):
        for handler in handlers:
            table = getattr(handler, "_method_handlers", None)  # grpc.method_handlers_generic_handler's
            if isinstance(table, dict):
                for name, method_handler in list(table.items()):
                    table[name] = _adapt(method_handler, self._limit)
        self._calls.add_generic_rpc_handlers(handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service, handlers):
        handlers = dict((name, _adapt(h, self._limit)) for name, h in handlers.items())
        self._calls.add_registered_method_handlers(service, handlers)
        register = getattr(self._server, "add_registered_method_handlers", None)
        if register is not None:  # grpcio < 1.63 has none: the generic handler added before serves the calls
            register(service, handlers)

    def __getattr__(self, name):
        return getattr(self._server, name)


def _group_members(pgid):
    me = os.getpid()
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def kill_process_group(grace=2.0):
    """SIGTERM everything the servicer started (our process group), then SIGKILL what is left, sparing us."""
    pgid = os.getpgid(0)
    if pgid != os.getpid():
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_members(pgid):
        time.sleep(0.05)
    for pid in _group_members(pgid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Session:
    def __init__(self, config, session_dir, stdin):
        self.config = config
        self.session_dir = session_dir
        self.stdin = stdin
        self.stopping = threading.Event()
        self.last_heard = time.monotonic()
        self.modules = []
        self.server = None
        self.workers = None

    def watch_controller(self):
        """Read heartbeats / STOP from the controller; EOF means the controller or its connection is gone."""
        for line in iter(self.stdin.readline, b""):
            self.last_heard = time.monotonic()
            if line.strip() == b"STOP":
                log.info("controller asked us to stop")
                break
        else:
            log.info("controller channel closed (EOF on stdin)")
        self.stopping.set()

    def watch_liveness(self):
        liveness = float(self.config.get("liveness", 60))
        beat = float(self.config.get("heartbeat", 5))
        while not self.stopping.wait(beat):
            try:
                sys.stdout.write("\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                log.info("controller channel closed (stdout)")
                self.stopping.set()
                return
            if time.monotonic() - self.last_heard > liveness:
                log.warning("no heartbeat from the controller for %.0fs: stopping", liveness)
                self.stopping.set()
            supervisor = self.config.get("supervisor_pid")
            if supervisor and os.getppid() != supervisor:
                log.warning("the supervisor (pid %d) is gone: stopping", supervisor)
                self.config["supervised"] = False  # nobody else will remove the session directory
                self.stopping.set()
            if self.workers is not None and self.workers.wedged():
                log.error(
                    "all %d workers have been stuck past their calls' deadlines for %gs and calls are refused: "
                    "stopping, so that the controller starts a fresh servicer",
                    self.workers.count,
                    STUCK_RESTART,
                )
                self.stopping.set()

    def stop(self):
        if self.server is not None:
            self.server.stop(grace=float(self.config.get("grace", 1.0))).wait(5)
        for module in self.modules:
            hook = getattr(module, "Shutdown", None)
            if callable(hook):
                try:
                    hook()
                except Exception:
                    log.exception("Shutdown() of %s raised", module.__name__)
        kill_process_group()
        logging.shutdown()
        if not self.config.get("supervised"):
            shutil.rmtree(self.session_dir, ignore_errors=True)  # else the supervisor does, after the kill


def _version(text):
    numbers = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits or 0))
    return tuple(numbers)


def use_compat_gencode(agent_dir, facts):
    """Put the bundle's adapted generated modules first on sys.path when this host's grpcio or protobuf is older
    than the gencode asks for (the controller picked the newest release this Python has; see sshfleet/_payload.py).
    Returns whether it did."""
    import json

    try:
        with open(os.path.join(agent_dir, "sshfleet_compat", "gencode.json")) as f:
            needs = json.load(f)
    except OSError:
        return False
    have = {"grpcio": facts["grpcio"], "protobuf": facts["protobuf"]}
    if all(_version(have[dist]) >= _version(version) for dist, version in needs.items() if dist in have):
        return False
    sys.path.insert(0, os.path.join(agent_dir, "sshfleet_compat"))
    log.info("grpcio %s, protobuf %s here: using gencode adapted for them", have["grpcio"], have["protobuf"])
    return True


class _Token(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds this host's controller secret to every call of the controller stub."""

    def __init__(self, secret):
        self._metadata = ((TOKEN_KEY, secret),)

    def _details(self, details):
        metadata = tuple(details.metadata or ()) + self._metadata
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


def _takes_controller(add_servicer):
    """Whether AddServicer has a second parameter (templates since two-way calls: AddServicer(server, controller))."""
    import inspect

    try:
        parameters = list(inspect.signature(add_servicer).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(parameters) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def controller_stub(spec):
    """The stub of the controller's service (the proto's <Service>Controller) that AddServicer(server, controller)
    gets, or None. It dials the port the controller forwarded back to this host (ssh -R) and sends this host's
    secret with every call, which the controller checks."""
    if not spec:
        return None
    module_name, _, class_name = spec["stub"].rpartition(".")
    stub_class = getattr(importlib.import_module(module_name), class_name)
    channel = grpc.insecure_channel(
        "127.0.0.1:%d" % int(spec["port"]),
        options=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20),
            ("grpc.enable_http_proxy", 0),
        ],
    )
    return stub_class(grpc.intercept_channel(channel, _Token(spec["secret"])))


# servicer.log is capped: past LOG_MAX_BYTES it is rotated once (servicer.log.1), so a chatty servicer holds at
# most twice that on the host's disk.
LOG_MAX_BYTES = 8 << 20

_session_dir = None


def leave_running(pid):
    """Leave process ``pid`` and everything in its session (setsid) running when the servicer ends: what
    ``detach`` means. Without it, the supervisor kills every process the servicer started. Returns whether it
    could be recorded (False when no supervisor watches this servicer)."""
    if _session_dir is None:
        return False
    with open(os.path.join(_session_dir, "detached"), "a") as f:
        f.write("%d\n" % pid)
    return True


def serve(config, facts, session_dir, stdin, emit):
    global _session_dir
    if os.getpgid(0) != os.getpid():
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
    if config.get("supervised"):
        _session_dir = session_dir
    from logging.handlers import RotatingFileHandler

    log_path = os.path.join(session_dir, "servicer.log")
    handler = RotatingFileHandler(log_path, maxBytes=int(config.get("log_max_bytes", LOG_MAX_BYTES)), backupCount=1)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler], level=config.get("log_level", "INFO"))
    os.chdir(session_dir)
    session = Session(config, session_dir, stdin)
    try:
        server = grpc.server(
            # max_workers for the servicer's blocking code, plus room for idle call streams (each holds a thread)
            futures.ThreadPoolExecutor(max_workers=int(config.get("workers", 64)) + 8, thread_name_prefix="rpc"),
            interceptors=(AuthInterceptor(config["secret"]),),
            options=[
                ("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 256 << 20),
                ("grpc.so_reuseport", 0),
                ("grpc.http2.lookahead_bytes", 4 << 20),
            ],
        )
        import google.protobuf

        facts = dict(facts, grpcio=grpc.__version__, protobuf=google.protobuf.__version__)
        facts["compat_gencode"] = use_compat_gencode(os.path.dirname(os.path.abspath(__file__)), facts)
        calls = Calls()
        registrar = _Registrar(server, calls, int(config.get("workers", 64)))
        session.workers = registrar.workers
        controller = controller_stub(config.get("controller"))
        for name in config["servicers"]:
            module = importlib.import_module(name)
            if controller is not None and _takes_controller(module.AddServicer):
                module.AddServicer(registrar, controller)
            else:
                module.AddServicer(registrar)
            session.modules.append(module)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "sshfleet.Runtime", {"Calls": grpc.stream_stream_rpc_method_handler(calls.handler)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        session.server = server
    except Exception:
        tb = traceback.format_exc()
        log.error("servicer failed to start:\n%s", tb)
        session.stop()
        emit("ERROR", {"kind": "bootstrap_failed", "message": "the servicer failed to start", "traceback": tb})
        sys.exit(1)
    log.info(
        "serving %s on 127.0.0.1:%d (pid %d, python %s)",
        ", ".join(config["servicers"]),
        port,
        os.getpid(),
        facts["python"],
    )
    # "pid" is the process the controller exec'd (the supervisor when there is one): the one the channel waits for.
    emit(
        "READY",
        {
            "port": port,
            "pid": int(config.get("supervisor_pid") or os.getpid()),
            "servicer_pid": os.getpid(),
            "session_dir": session_dir,
            "log": log_path,
            "facts": facts,
        },
    )
    threading.Thread(target=session.watch_controller, name="controller", daemon=True).start()
    threading.Thread(target=session.watch_liveness, name="liveness", daemon=True).start()
    session.stopping.wait()
    session.stop()
    os._exit(0)
