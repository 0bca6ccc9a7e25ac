"""`sshfleet run`'s fast path for a plain command: one ``ssh`` process per host, a standard-library shim there.

An agent (grpcio on both sides, a servicer started on each host) is what a call needs; a one-off command needs
none of it. Here each host gets ``ssh host 'python3 -I -S -c LOADER'`` (``_ssh._oneshot``), the loader reads
``sshfleet/remote/adhoc.py`` from stdin, and that shim runs the command with the guarantees the exec agent
gives: argv to execvp untouched, stdin /dev/null unless asked, the command's process group and everything it
starts (setsid and double forks too, as a child subreaper) killed when it ends, on Ctrl-C's abort, when the
controller dies (its stdin ends) or when the link is lost (no heartbeat). The protocol is in the shim's header.

The controller side is one thread and a selector: no paramiko, grpc or protobuf is imported, so `sshfleet run`
starts in tens of milliseconds. ``AdhocRun`` gives ``sshfleet run`` the same events as the exec agent's stream
(``poll()``, ``send_signal()``, ``cancel()``), so everything above it (output, gather, JSON, the summary) is
shared.
"""

from __future__ import annotations

import collections
import os
import selectors
import shlex
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import IO, Any, NamedTuple, Optional

from sshfleet._ssh import _oneshot
from sshfleet._ssh._config import ResolvedHost
from sshfleet.errors import BootstrapError, ChannelError, ConnectTimeout, RemotePythonError

SHIM = Path(__file__).resolve().parent / "remote" / "adhoc.py"
START = b"\0sshfleet-start\n"
END = b"\0sshfleet-end "
# Reads exactly the shim's bytes from stdin (the rest of stdin is the shim's control stream) and runs them.
LOADER = (
    "import os\nn=%d\nb=b''\nwhile len(b)<n:\n c=os.read(0,n-len(b))\n if not c:os._exit(1)\n b+=c\n"
    "exec(compile(b,'sshfleet-run','exec'))"
)
# The Pythons tried when neither the inventory nor --python names one, as the agent's bootstrap tries them first.
PYTHONS = ("python3", "/usr/libexec/platform-python")
NO_PYTHON = "sshfleet: no python3 on this host"
STOP_GRACE = 3.0  # after cancel(): how long the ssh processes get to pass the EOF on and end
# After the end record, how long the ssh process may stay: only a process that escaped the helper (no subreaper
# on that host) could hold the channel open, and the run must not wait for it.
END_GRACE = 2.0
READ_SIZE = 1 << 16


class ExecEvent(NamedTuple):
    """What ``poll()`` returns: output ("stdout"/"stderr", bytes) or the end ("exit", the host's outcome)."""

    host: str
    kind: str
    data: Any


class Outcome(NamedTuple):
    """How a command ended, in the exec agent's RunReply words (what ``_cli._output.classify`` reads)."""

    exit_code: int
    signal: int
    timed_out: bool
    started: bool
    comment: str


class _Host:
    """One host's ssh process and what has come from it so far. (A plain class: a dataclass costs its
    creation at import, and this module is on the path of every `sshfleet run`.)"""

    def __init__(self, name: str, resolved: ResolvedHost) -> None:
        self.name = name
        self.resolved = resolved
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.begun = 0.0
        self.started = False  # the shim said START: stderr from here on is the command's
        self.before = bytearray()  # stderr before START: ssh's or the shell's words
        self.held = b""  # the tail of stderr that may be the start of the end record
        self.record: Optional[bytes] = None
        self.record_at = 0.0  # when the end record came: the ssh process should end right after it
        self.open_pipes = 2
        self.outbox = bytearray()  # frames for its stdin not written yet
        self.stdin_closed = False
        self.done = False


def _frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack(">I", len(payload)) + payload


def remote_command(python: Optional[str], size: int) -> str:
    """The shell line sshd runs: the loader under the named Python, or the first of ``PYTHONS`` found."""
    loader = shlex.quote(LOADER % size)
    if python:
        return f"exec {shlex.quote(python)} -I -S -c {loader}"
    tries = " ".join(shlex.quote(p) for p in PYTHONS)
    script = (
        f'for p in {tries}; do command -v "$p" >/dev/null 2>&1 && exec "$p" -I -S -c {loader}; done; '
        f"echo {shlex.quote(NO_PYTHON)} >&2; exit 127"
    )
    return f"exec /bin/sh -c {shlex.quote(script)}"  # the login shell may be csh or fish: the loop is sh's


class AdhocRun:
    """One command on every host; events as they come from ``poll()``. Not thread-safe except
    ``send_signal()``, which a signal handler may call (it only queues)."""

    def __init__(
        self, hosts: list[ResolvedHost], *, forks: int = 64, python: Optional[str] = None, keepalive: float = 5.0
    ) -> None:
        self.hosts = [h.name for h in hosts]
        self._hosts = {h.name: _Host(h.name, h) for h in hosts}
        self._waiting: collections.deque[_Host] = collections.deque()
        self._forks = max(1, forks)
        self._python = python
        self._keepalive = keepalive
        self._shim = SHIM.read_bytes()
        self._preamble = b""
        self._stdin: Optional[IO[bytes]] = None
        self._stdin_seen: list[bytes] = []  # what hosts started later must still be sent
        self._stdin_ended = True
        self._signals: collections.deque[int] = collections.deque()
        self._events: collections.deque[ExecEvent] = collections.deque()
        self._selector = selectors.DefaultSelector()
        self._running: dict[str, _Host] = {}
        self._stopped = False
        self._timed_out: set[str] = set()  # hosts whose ssh was killed for taking too long to connect
        self._last_beat = time.monotonic()

    # --- the interface of the exec agent's stream ---------------------------------------------------------

    def __enter__(self) -> AdhocRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stream(
        self,
        argv: Optional[list[str]] = None,
        *,
        shell: Optional[str] = None,
        stdin: Optional[IO[bytes]] = None,
        timeout: Optional[float] = None,
        **_terminal: Any,
    ) -> AdhocRun:
        """Start ``argv`` (or the ``shell`` line) on every host, ``forks`` at a time; the exec agent's
        ``stream()`` signature (its terminal arguments are for -t, which takes the agent's path)."""
        words = [shell] if shell is not None else list(argv or [])
        fields = ["shell" if shell is not None else "argv", "1" if stdin is not None else "0"]
        fields += [repr(float(timeout or 0)), repr(float(self._keepalive))]
        header = "\0".join(fields + words).encode("utf-8", "surrogateescape")
        self._preamble = self._shim + _frame(b"C", header)
        self._stdin = stdin
        self._stdin_ended = stdin is None
        if stdin is not None:
            try:
                os.set_blocking(stdin.fileno(), False)
                self._selector.register(stdin.fileno(), selectors.EVENT_READ, ("stdin", None))
            except (OSError, ValueError, AttributeError):
                self._read_all_stdin(stdin)
        self._waiting.extend(self._hosts.values())
        self._start_more()
        return self

    def send_signal(self, sig: str = "SIGINT") -> None:
        """Queue ``sig`` for every running command's process group (safe from a signal handler)."""
        self._signals.append(int(getattr(signal, sig)) if isinstance(sig, str) else int(sig))

    def poll(self, timeout: Optional[float] = None) -> Optional[ExecEvent]:
        """The next event, waiting up to ``timeout``; None when nothing came; StopIteration once all hosts ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            if self._finished():
                raise StopIteration
            self._start_more()
            self._pass_signals()
            self._beat()
            wait = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            self._turn(min(wait, self._next_timer()))
            if not self._events and deadline is not None and time.monotonic() >= deadline:
                return None
        return self._events.popleft()

    def cancel(self) -> None:
        """Stop every host: EOF on each shim's stdin kills its command and all it started; hosts not yet
        started never start. Returns once the ssh processes ended (or were killed after ``STOP_GRACE``)."""
        self._stopped = True
        while self._waiting:
            host = self._waiting.popleft()
            self._end(host, None)
        for host in list(self._running.values()):
            self._close_stdin(host)
        deadline = time.monotonic() + STOP_GRACE
        while self._running and time.monotonic() < deadline:
            self._turn(0.05)
        for host in list(self._running.values()):
            if host.proc is not None:
                host.proc.kill()
                host.proc.wait()
            self._end(host, None)

    def close(self) -> None:
        if self._running or self._waiting:
            self.cancel()
        self._selector.close()

    # --- the loop ----------------------------------------------------------------------------------------

    def _finished(self) -> bool:
        return not self._waiting and not self._running

    def _start_more(self) -> None:
        while self._waiting and len(self._running) < self._forks and not self._stopped:
            host = self._waiting.popleft()
            python = self._python or host.resolved.python
            try:
                host.proc = _oneshot.spawn(host.resolved, remote_command(python, len(self._shim)))
            except OSError as exc:
                self._end(host, BootstrapError(host.name, f"cannot start ssh: {exc.strerror or exc}"))
                continue
            host.begun = time.monotonic()
            self._running[host.name] = host
            assert host.proc.stdout is not None and host.proc.stderr is not None and host.proc.stdin is not None
            self._selector.register(host.proc.stdout, selectors.EVENT_READ, ("stdout", host))
            self._selector.register(host.proc.stderr, selectors.EVENT_READ, ("stderr", host))
            os.set_blocking(host.proc.stdin.fileno(), False)
            self._send(host, self._preamble + b"".join(_frame(b"D", chunk) for chunk in self._stdin_seen))
            if self._stdin_ended and self._stdin is not None:
                self._send(host, _frame(b"E"))

    def _next_timer(self) -> float:
        """Seconds to the next heartbeat or connect deadline."""
        now = time.monotonic()
        wait = self._last_beat + self._keepalive - now if self._keepalive > 0 else 1.0
        for host in self._running.values():
            if not host.started:
                wait = min(wait, host.begun + self._connect_limit(host) - now)
            elif host.record_at:
                wait = min(wait, host.record_at + END_GRACE - now)
        return max(0.0, wait)

    def _connect_limit(self, host: _Host) -> float:
        return host.resolved.connect_timeout + host.resolved.auth_timeout + 5.0

    def _beat(self) -> None:
        now = time.monotonic()
        if self._keepalive > 0 and now - self._last_beat >= self._keepalive:
            self._last_beat = now
            for host in self._running.values():
                if host.started:
                    self._send(host, _frame(b"H"))
        for host in list(self._running.values()):
            if not host.started and now - host.begun > self._connect_limit(host) and host.proc is not None:
                host.proc.kill()  # ssh's own ConnectTimeout covers TCP; this covers a server that never answers
                self._timed_out.add(host.name)
            if host.record_at and now - host.record_at > END_GRACE and host.proc is not None:
                host.proc.kill()  # the result is in: whatever keeps the channel open is not waited for

    def _pass_signals(self) -> None:
        while self._signals:
            number = self._signals.popleft()
            for host in self._running.values():
                self._send(host, _frame(b"S", str(number).encode()))

    def _turn(self, wait: float) -> None:
        for key, mask in self._selector.select(wait):
            what, host = key.data
            if what == "stdin":
                self._read_stdin()
            elif mask & selectors.EVENT_WRITE and what == "stdin-of":
                self._flush(host)
            else:
                self._read(host, what, key.fileobj)

    def _read(self, host: _Host, stream: str, pipe: Any) -> None:
        try:
            data = os.read(pipe.fileno(), READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._selector.unregister(pipe)
            pipe.close()
            host.open_pipes -= 1
            if host.open_pipes == 0:
                self._reap(host)
            return
        if stream == "stdout":
            self._events.append(ExecEvent(host.name, "stdout", data))
        else:
            self._stderr(host, data)

    def _stderr(self, host: _Host, data: bytes) -> None:
        """Split what the shim said (START, the end record) from the command's stderr."""
        data = host.held + data
        host.held = b""
        if not host.started:
            host.before += data
            at = host.before.find(START)
            if at < 0:
                return
            data = bytes(host.before[at + len(START) :])
            del host.before[at:]
            host.started = True
        if host.record is not None:
            host.record += data
            return
        at = data.find(END)
        if at >= 0:
            host.record = data[at + len(END) :]
            host.record_at = time.monotonic()
            data = data[:at]
        else:
            keep = _partial_suffix(data, END)
            if keep:
                data, host.held = data[:-keep], data[-keep:]
        if data:
            self._events.append(ExecEvent(host.name, "stderr", data))

    def _reap(self, host: _Host) -> None:
        assert host.proc is not None
        status = host.proc.wait()
        if host.proc.stdin is not None and not host.stdin_closed:
            self._close_stdin(host)
        if host.held:
            self._events.append(ExecEvent(host.name, "stderr", host.held))
        self._end(host, self._outcome(host, status))

    def _outcome(self, host: _Host, status: int) -> Any:
        if host.record is not None:
            try:
                code, signum, late, began, comment = host.record.decode("utf-8", "replace").split(" ", 4)
                return Outcome(int(code), int(signum), late == "1", began == "1", comment.rstrip("\n"))
            except ValueError:
                pass
        if self._stopped:
            return None
        if host.started:
            said = bytes(host.before).decode("utf-8", "replace").strip()
            return ChannelError(host.name, f"connection lost while the command ran{': ' + said if said else ''}")
        timed_out = host.name in self._timed_out
        if status == _oneshot.SSH_FAILED or timed_out:
            limit = self._connect_limit(host)
            error = _oneshot.failure(host.resolved, bytes(host.before), timed_out=timed_out, waited=limit)
            if timed_out and not isinstance(error, ConnectTimeout) and error.kind == "unreachable":
                return ConnectTimeout(host.name, error.message, "auth")
            return error
        said = bytes(host.before).decode("utf-8", "replace").strip()
        if NO_PYTHON in said or status == 127:
            return RemotePythonError(
                host.name,
                f"no usable Python: {said or 'python3 not found'} (exit status {status}); install python3 or "
                "name one with --python / ansible_python_interpreter",
            )
        return BootstrapError(host.name, f"the run's helper did not start (exit status {status}): {said}")

    def _end(self, host: _Host, outcome: Any) -> None:
        if host.done:
            return
        host.done = True
        self._running.pop(host.name, None)
        self._events.append(ExecEvent(host.name, "exit", outcome))

    # --- stdin: ours to the hosts, and the control frames ------------------------------------------------

    def _send(self, host: _Host, data: bytes) -> None:
        if host.stdin_closed or host.done:
            return
        host.outbox += data
        self._flush(host)

    def _flush(self, host: _Host) -> None:
        proc = host.proc
        if proc is None or proc.stdin is None or host.stdin_closed:
            return
        try:
            while host.outbox:
                written = os.write(proc.stdin.fileno(), host.outbox)
                del host.outbox[:written]
        except BlockingIOError:
            pass
        except OSError:  # ssh has gone: its end comes through stdout/stderr
            host.outbox.clear()
        self._watch_writable(host, bool(host.outbox))

    def _watch_writable(self, host: _Host, want: bool) -> None:
        assert host.proc is not None and host.proc.stdin is not None
        stdin = host.proc.stdin
        registered = self._is_registered(stdin)
        if want and not registered:
            self._selector.register(stdin, selectors.EVENT_WRITE, ("stdin-of", host))
        elif not want and registered:
            self._selector.unregister(stdin)

    def _is_registered(self, fileobj: Any) -> bool:
        try:
            self._selector.get_key(fileobj)
        except KeyError:
            return False
        return True

    def _close_stdin(self, host: _Host) -> None:
        if host.stdin_closed or host.proc is None or host.proc.stdin is None:
            return
        if self._is_registered(host.proc.stdin):
            self._selector.unregister(host.proc.stdin)
        host.stdin_closed = True
        host.proc.stdin.close()

    def _read_stdin(self) -> None:
        assert self._stdin is not None
        try:
            data = os.read(self._stdin.fileno(), READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._stdin_seen.append(data)
            for host in self._running.values():
                self._send(host, _frame(b"D", data))
            return
        self._selector.unregister(self._stdin.fileno())
        self._stdin_ended = True
        for host in self._running.values():
            self._send(host, _frame(b"E"))

    def _read_all_stdin(self, stdin: IO[bytes]) -> None:
        """A stdin without a file descriptor (a test's BytesIO): read it whole, up front."""
        data = stdin.read()
        if data:
            self._stdin_seen.append(bytes(data))
        self._stdin_ended = True


def _partial_suffix(data: bytes, marker: bytes) -> int:
    """How many bytes at the end of ``data`` could begin ``marker`` (held back until more comes)."""
    for size in range(min(len(marker) - 1, len(data)), 0, -1):
        if marker.startswith(data[-size:]):
            return size
    return 0
