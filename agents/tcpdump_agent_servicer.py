# Servicer of tcpdump_agent.TcpDumpAgent (proto/tcpdump_agent.proto): started from the `sshfleet generate`
# template and implemented by hand; `sshfleet generate` keeps it unless --force. It runs on the hosts, so it may
# use only the standard library, grpc and protobuf, on Python >= 3.6.
"""Capture the traffic between a host and one destination with tcpdump, then archive the capture."""

import collections
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

try:  # package import on the controller, top-level import on the host
    from . import tcpdump_agent_pb2 as pb
    from . import tcpdump_agent_pb2_grpc as pb_grpc
except ImportError:
    import tcpdump_agent_pb2 as pb
    import tcpdump_agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Where tcpdump lives when it is not on the login PATH (Debian: /usr/bin, most others: /usr/sbin).
TCPDUMP_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")
LISTEN_TIMEOUT = 15.0  # tcpdump prints "listening on" within milliseconds; this only bounds a wedged start
STOP_TIMEOUT = 10.0
# A host name or an IPv4/IPv6 address, nothing that tcpdump would read as more filter syntax.
_DESTINATION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:%-]*$")
_CHATTER = re.compile(r"listening on|data link type")  # what tcpdump says when all is well
_STATS = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)")

_servicers = []  # for Shutdown(): every instance AddServicer made


def AddServicer(server):
    servicer = TcpDumpAgentServicer()
    _servicers.append(servicer)
    pb_grpc.add_TcpDumpAgentServicer_to_server(servicer, server)


def Shutdown():
    """Stop a running capture cleanly at teardown, so the capture file ends on a whole packet."""
    for servicer in _servicers:
        servicer.close()


def find_tcpdump():
    """Path of the tcpdump executable, or None."""
    found = shutil.which("tcpdump")
    if found:
        return found
    for directory in TCPDUMP_DIRS:
        candidate = os.path.join(directory, "tcpdump")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _plural(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fail(comment):
    log.warning("%s", comment)
    return pb.Response(success=False, comment=comment)


def _ok(comment):
    log.info("%s", comment)
    return pb.Response(success=True, comment=comment)


def _host_path(value, what):
    """``value`` with ~ expanded, as an absolute path; ValueError naming ``what`` otherwise."""
    if not value:
        raise ValueError(f"{what} is required")
    if "\0" in value:
        raise ValueError(f"{what} contains a NUL byte")
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        raise ValueError(f"{what} must be an absolute path on the host, not {value!r}")
    return os.path.normpath(path)


def _archive_dir(value):
    """Where ArchiveDump writes: an absolute path (or ~) as it is, e.g. a shared filesystem; a relative one inside
    this servicer's session directory (its working directory), which the controller collects with agent.fetch()
    before close() removes it."""
    if value and not value.startswith(("/", "~")):
        base = os.getcwd()
        path = os.path.normpath(os.path.join(base, value))
        if "\0" in value or not path.startswith(base + os.sep):
            raise ValueError(f"path {value!r} leaves the session directory")
        return path
    return _host_path(value, "path")


def _check_writable_file(path, what):
    directory = os.path.dirname(path) or "/"
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a directory")
    if not os.path.isdir(directory):
        raise ValueError(f"{what}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: directory {directory} is not writable")


class Capture:
    """One running tcpdump writing pcap to its stdout, which we copy into the dump file.

    Writing through a pipe (``-w -``) rather than letting tcpdump open the file sidesteps tcpdump dropping
    privileges to its own user and AppArmor profiles that limit where tcpdump may write.
    """

    def __init__(self, argv, dumpfile):
        self.argv = argv
        self.dumpfile = dumpfile
        self.listening = threading.Event()
        self.stderr = collections.deque(maxlen=50)
        self.bytes = 0
        self.write_error = None
        self._out = open(dumpfile, "wb")  # noqa: SIM115 - closed by the copy thread when tcpdump ends
        try:
            # Not start_new_session: the runtime kills our process group at teardown, tcpdump included.
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True
            )
        except BaseException:
            self._out.close()
            raise
        self._threads = [
            threading.Thread(target=self._copy_pcap, name="tcpdump-pcap", daemon=True),
            threading.Thread(target=self._read_stderr, name="tcpdump-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _copy_pcap(self):
        fd = self.proc.stdout.fileno()
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                if self.write_error is None:
                    try:
                        self._out.write(chunk)
                        self._out.flush()  # -U flushes per packet; keep the file as current as the pipe
                        self.bytes += len(chunk)
                    except OSError as exc:  # keep draining, or tcpdump would block on a full pipe
                        self.write_error = exc
        finally:
            self._out.close()

    def _read_stderr(self):
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self.stderr.append(line)
            log.info("tcpdump: %s", line)
            if "listening on" in line:
                self.listening.set()

    def wait_listening(self, timeout):
        """True once tcpdump says it listens; False if it exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listening.wait(0.05):
                return True
            if self.proc.poll() is not None:
                self._join()
                return self.listening.is_set()
        return False

    def stop(self, timeout=STOP_TIMEOUT):
        """Interrupt tcpdump (it then flushes and prints its counts) and wait for the copy to finish."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._join()
        return self.proc.returncode

    def _join(self):
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def counts(self):
        """tcpdump's closing statistics, e.g. {"captured": 12, "dropped by kernel": 0}."""
        found = {}
        for line in self.stderr:
            match = _STATS.match(line)
            if match:
                found[match.group(2)] = int(match.group(1))
        return found

    def last_words(self):
        """tcpdump's last few lines besides its counts: an error is often two lines (reason, then errno)."""
        lines = [line for line in self.stderr if not _STATS.match(line) and not _CHATTER.search(line)]
        return " ".join(lines[-3:])[-300:] if lines else "no message"


class TcpDumpAgentServicer(pb_grpc.TcpDumpAgentServicer):
    """Implements tcpdump_agent.TcpDumpAgent on the host; one instance serves every call."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._dumpfile = None
        self._log_handler = None
        self._capture = None
        log.debug("TcpDumpAgentServicer created.")

    def Configure(self, request, context):
        """Say where the capture file and the agent's log go on the host; needed before StartCollection."""
        log.debug("Invoking: Configure(dumpfile=%r, agentlog=%r)", request.dumpfile, request.agentlog)
        with self._lock:
            if self._running():
                return _fail("a capture is running: StopCollection first")
            try:
                dumpfile = _host_path(request.dumpfile, "dumpfile")
                _check_writable_file(dumpfile, "dumpfile")
                agentlog = None
                if request.agentlog:
                    agentlog = _host_path(request.agentlog, "agentlog")
                    _check_writable_file(agentlog, "agentlog")
                    if agentlog == dumpfile:
                        raise ValueError("agentlog and dumpfile are the same file")
                handler = logging.FileHandler(agentlog) if agentlog else None
            except (OSError, ValueError) as exc:
                return _fail(str(exc))
            self._set_log_handler(handler)
            self._dumpfile = dumpfile
            return _ok(f"dumpfile {dumpfile}, log {agentlog}" if agentlog else f"dumpfile {dumpfile}")

    def _set_log_handler(self, handler):
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
        self._log_handler = handler
        if handler is not None:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            if log.getEffectiveLevel() > logging.INFO:  # the agent log is asked for: give it tcpdump's lines
                log.setLevel(logging.INFO)

    def _running(self):
        return self._capture is not None and self._capture.proc.poll() is None

    def StartCollection(self, request, context):
        """Start tcpdump on all interfaces with the filter `host <destination>`; answers once it listens."""
        destination = request.destination
        log.debug("Invoking: StartCollection(destination=%r)", destination)
        with self._lock:
            if self._dumpfile is None:
                return _fail("not configured: call Configure(dumpfile=...) first")
            if self._running():
                return _fail(f"a capture is already running (pid {self._capture.proc.pid}): StopCollection first")
            if not destination:
                return _fail("destination is required (a host name or address)")
            if not _DESTINATION.match(destination):
                return _fail(f"destination must be a host name or address, not {destination!r}")
            tcpdump = find_tcpdump()
            if tcpdump is None:
                return _fail(f"tcpdump is not installed (not on PATH nor in {', '.join(TCPDUMP_DIRS)})")
            # -U: write each packet as it comes; --immediate-mode: libpcap hands packets over at once instead
            # of per buffer block, so StopCollection loses nothing that was on the wire before it; -B 8192:
            # an 8 MiB kernel buffer, as the 2 MiB default drops packets in immediate mode at modest rates.
            argv = [tcpdump, "-i", "any", "-U", "--immediate-mode", "-B", "8192", "-n", "-w", "-", "host", destination]
            try:
                capture = Capture(argv, self._dumpfile)
            except OSError as exc:
                return _fail(f"cannot start {tcpdump}: {exc}")
            if not capture.wait_listening(LISTEN_TIMEOUT):
                code = capture.stop()
                if code is None or code == 0:
                    return _fail(f"tcpdump did not start listening within {LISTEN_TIMEOUT:g}s")
                return _fail(f"tcpdump exited with status {code}: {capture.last_words()}")
            self._capture = capture
            return _ok(
                f"capturing host {destination} on all interfaces into {self._dumpfile} (tcpdump pid {capture.proc.pid})"
            )

    def StopCollection(self, request, context):
        """Stop the running capture; the comment gives tcpdump's packet counts. Fails if none is running."""
        log.debug("Invoking: StopCollection()")
        with self._lock:
            capture = self._capture
            if capture is None:
                return _fail("no capture is running: call StartCollection first")
            self._capture = None
            died = capture.proc.poll()
            code = capture.stop()
            if died is not None:
                return _fail(f"tcpdump had stopped by itself (status {died}): {capture.last_words()}")
            if capture.write_error is not None:
                return _fail(f"could not write {capture.dumpfile}: {capture.write_error}")
            counts = capture.counts()
            if "captured" not in counts:
                return _fail(f"tcpdump ended with status {code}: {capture.last_words()}")
            captured = _plural(counts["captured"], "packet")
            dropped = counts.get("dropped by kernel", 0)
            return _ok(f"{captured} captured, {dropped} dropped by kernel; {capture.bytes} bytes in {capture.dumpfile}")

    def ArchiveDump(self, request, context):
        """Copy the capture file into directory path (created if missing) as <tag>-<hostname>.pcap."""
        log.debug("Invoking: ArchiveDump(path=%r, tag=%r)", request.path, request.tag)
        tag = request.tag
        with self._lock:
            if self._dumpfile is None:
                return _fail("not configured: call Configure(dumpfile=...) first")
            if self._running():
                return _fail("the capture is still running: StopCollection first")
            if not os.path.isfile(self._dumpfile):
                return _fail(f"no capture file at {self._dumpfile}: run StartCollection and StopCollection first")
            if "/" in tag or "\0" in tag or tag in (".", ".."):
                return _fail(f"tag must be usable in a file name, not {tag!r}")
            try:
                directory = _archive_dir(request.path)
            except ValueError as exc:
                return _fail(str(exc))
            hostname = socket.gethostname()
            name = f"{tag}-{hostname}.pcap" if tag else f"{hostname}.pcap"
            target = os.path.join(directory, name)
            try:
                os.makedirs(directory, exist_ok=True)
                # Copy then rename: a reader of the archive never sees half a file.
                fd, partial = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
                try:
                    with os.fdopen(fd, "wb") as out, open(self._dumpfile, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.chmod(partial, 0o644)
                    os.replace(partial, target)
                except BaseException:
                    os.unlink(partial)
                    raise
            except OSError as exc:
                return _fail(f"cannot archive to {target}: {exc}")
            return _ok(f"archived {os.path.getsize(target)} bytes to {target}")

    def close(self):
        with self._lock:
            if self._capture is not None:
                self._capture.stop(timeout=2.0)
                self._capture = None
            self._set_log_handler(None)
