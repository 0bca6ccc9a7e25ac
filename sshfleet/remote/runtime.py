# The servicer runtime on the host, shipped in every agent bundle as the top-level module `sshfleet_runtime`.
# Standard library + grpcio + protobuf only; never imports sshfleet. Python >= 3.9.
#
# Life cycle: bootstrap.py calls serve(); we bind 127.0.0.1 on an ephemeral port, print READY, then live as long
# as the SSH channel that started us: EOF on stdin, a "STOP" line, or no heartbeat for `liveness` seconds stops
# the server, kills our process group (what the servicer started) and removes the session directory.
import hmac
import importlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from concurrent import futures

import grpc

TOKEN_KEY = "x-sshfleet-token"
TRACEBACK_KEY = "x-sshfleet-traceback-bin"

log = logging.getLogger("sshfleet.remote")


def _abort_unauthenticated(request, context):
    context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "sshfleet: this servicer only answers the controller that started it"
    )


def _code_of(context):
    code = getattr(context, "code", None)
    return code() if callable(code) else None


def _report(context, exc):
    """Turn a servicer exception into UNKNOWN with the remote traceback in trailing metadata."""
    # Drop our own wrapper frame: the user wants to see where *their* servicer raised.
    etype, value, tb_obj = sys.exc_info()
    tb = "".join(traceback.format_exception(etype, value, tb_obj.tb_next if tb_obj else None))
    log.error("servicer raised:\n%s", tb)
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
        if token is None or not hmac.compare_digest(token.encode("ascii", "replace"), self._secret):
            log.warning("refused %s: missing or wrong session token", details.method)
            return self._refuse
        handler = self._cache.get(details.method)
        if handler is None:
            handler = continuation(details)
            if handler is None:
                return None
            if handler.unary_unary:
                handler = handler._replace(unary_unary=_guard_unary(handler.unary_unary))
            elif handler.stream_unary:
                handler = handler._replace(stream_unary=_guard_unary(handler.stream_unary))
            elif handler.unary_stream:
                handler = handler._replace(unary_stream=_guard_stream(handler.unary_stream))
            elif handler.stream_stream:
                handler = handler._replace(stream_stream=_guard_stream(handler.stream_stream))
            self._cache[details.method] = handler
        return handler


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
        shutil.rmtree(self.session_dir, ignore_errors=True)


def serve(config, facts, session_dir, stdin, emit):
    if os.getpgid(0) != os.getpid():
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
    log_path = os.path.join(session_dir, "servicer.log")
    logging.basicConfig(
        filename=log_path,
        level=config.get("log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.chdir(session_dir)
    session = Session(config, session_dir, stdin)
    try:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=int(config.get("workers", 16)), thread_name_prefix="rpc"),
            interceptors=(AuthInterceptor(config["secret"]),),
            options=[
                ("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 256 << 20),
                ("grpc.so_reuseport", 0),
                ("grpc.http2.lookahead_bytes", 4 << 20),
            ],
        )
        for name in config["servicers"]:
            module = importlib.import_module(name)
            module.AddServicer(server)
            session.modules.append(module)
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
    emit(
        "READY",
        {"port": port, "pid": os.getpid(), "session_dir": session_dir, "log": log_path, "facts": facts},
    )
    threading.Thread(target=session.watch_controller, name="controller", daemon=True).start()
    threading.Thread(target=session.watch_liveness, name="liveness", daemon=True).start()
    session.stopping.wait()
    session.stop()
    os._exit(0)
