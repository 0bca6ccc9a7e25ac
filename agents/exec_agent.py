"""``ExecAgent``: run commands on every host, collected (``Run``) or live (``stream``).

::

    from agents.exec_agent import ExecAgent

    with ExecAgent(["node01", "node02"]) as fleet:
        replies = fleet.Run(["printf", "%s\\n", "a b"], timeout=30)     # argv exactly: 'a b' stays one argument
        for host, reply in replies.items():                             # RunReply, or a HostError
            print(host, reply.exit_code, reply.stdout)

        with fleet.stream(shell="make -j4 2>&1") as live:               # output as it comes
            for host, stream, chunk in live:                            # stream is "stdout" or "stderr"
                print(host, stream, chunk)
        print(live.exit_codes)                                          # {host: 0, ...}; None where no exit
        print(live.results.status())                                    # Responses of RunReply / HostError

The remote stdin is /dev/null unless ``stdin`` is given (bytes, a binary file, an iterable of bytes, or
``PIPE`` to write it yourself with ``write()`` / ``close_stdin()``), so a command that reads stdin ends instead
of hanging. Each command leads its own process group on its host: ``send_signal("SIGINT")`` reaches its children.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, NamedTuple, Optional, Union

from sshfleet import Responses
from sshfleet.errors import CallError, CallTimeout, HostError, UsageError

from . import exec_pb2 as pb
from .exec import ExecAgent as _GeneratedExecAgent
from .exec import ExecAgentException

__all__ = ["PIPE", "ExecAgent", "ExecAgentException", "ExecEvent", "ExecStream"]


class _Pipe:
    def __repr__(self) -> str:
        return "PIPE"


# stdin=PIPE: the remote stdin stays open; feed it with ExecStream.write() and end it with close_stdin().
PIPE: Any = _Pipe()
# Streams without a command timeout still get a (far) gRPC deadline, so nothing waits forever.
NO_TIMEOUT_DEADLINE = 365 * 86400.0
# Margin between the command's timeout and the call's deadline: the host kills, then reports.
DEADLINE_MARGIN = 30.0
_END = object()
StdinArg = Union[None, bytes, str, IO[bytes], Iterable[bytes], Any]


class ExecEvent(NamedTuple):
    """One thing that happened: ``kind`` is "stdout"/"stderr" (``data`` is bytes) or "exit" (``data`` is the
    host's final RunReply, or the HostError that ended it)."""

    host: str
    kind: str
    data: Any


def _command(
    argv: Optional[Sequence[str]],
    shell: Optional[str],
    stdin: Optional[bytes],
    stdin_open: bool,
    timeout: Optional[float],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
) -> pb.RunRequest:
    """Check the command before anything goes on the network (the distrunner mistakes are caller errors here)."""
    if isinstance(argv, (str, bytes)):
        raise UsageError(
            f"argv must be a list of arguments, not the string {argv!r}: it is never split; "
            "pass shell='...' to run a command line with /bin/sh -c"
        )
    if (argv is None or len(argv) == 0) == (not shell):
        raise UsageError("give exactly one of argv (a list of arguments) or shell (a command line)")
    if argv is not None and not all(isinstance(a, str) for a in argv):
        raise UsageError(f"every argument must be a str: {list(argv)!r}")
    if timeout is not None and not timeout > 0:
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return pb.RunRequest(
        argv=list(argv or ()),
        shell=shell or "",
        stdin=stdin or b"",
        stdin_open=stdin_open,
        timeout=float(timeout or 0),
        env=dict(env or {}),
        cwd=cwd or "",
    )


def _as_bytes(data: Union[bytes, bytearray, str]) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _signal_number(sig: Union[int, str]) -> int:
    if isinstance(sig, str):
        name = sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig.upper()
        if name not in pb.Signal.keys():  # noqa: SIM118 (an enum wrapper, not a dict)
            raise UsageError(f"cannot send {sig!r}: one of {', '.join(pb.Signal.keys()[1:])}")
        return int(pb.Signal.Value(name))
    if int(sig) not in pb.Signal.values():
        raise UsageError(f"cannot send signal {sig!r}: one of {', '.join(pb.Signal.keys()[1:])}")
    return int(sig)


class ExecAgent(_GeneratedExecAgent):
    """Runs commands on every host (see the module docstring); options as for every agent."""

    PIPE = PIPE

    def Run(  # type: ignore[override]
        self,
        argv: Optional[Sequence[str]] = None,
        *,
        shell: Optional[str] = None,
        stdin: Union[bytes, str, None] = None,
        stdin_open: Optional[bool] = None,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        rpc_timeout: Optional[float] = None,
        detach: bool = False,
    ) -> Responses:
        """Run one command on every host to completion: Responses of RunReply (exit_code, signal, timed_out,
        stdout, stderr, success = exit code 0), or a HostError for a host that could not be asked.

        ``timeout`` is the command's (SIGTERM, then SIGKILL); the call's own deadline is ``rpc_timeout``,
        by default ``timeout`` + 30 s, or the agent's call timeout when the command has none. A call that
        ends early (deadline, Ctrl-C) kills the command on the host.

        Everything a command starts in the background (``&``, ``nohup``, ``setsid``, a double fork) is killed
        when the agent closes. ``detach=True`` leaves the command running instead: it starts in a session of
        its own with stdin, stdout and stderr on /dev/null (redirect in ``shell`` to keep its output), and Run
        answers at once with its ``pid`` (exit_code 0 once it started).
        """
        if detach and (stdin is not None or stdin_open or timeout is not None):
            raise UsageError("a detached command takes no stdin and no timeout: it outlives the call")
        request = _command(
            argv, shell, _as_bytes(stdin) if stdin is not None else None, bool(stdin_open), timeout, env, cwd
        )
        request.detach = detach
        deadline = rpc_timeout if rpc_timeout is not None else (timeout + DEADLINE_MARGIN if timeout else None)
        fields = {f.name: getattr(request, f.name) for f in request.DESCRIPTOR.fields}
        fields["env"] = dict(request.env)
        return self.invoke("Run", fields, timeout=deadline)

    def stream(
        self,
        argv: Optional[Sequence[str]] = None,
        *,
        shell: Optional[str] = None,
        stdin: StdinArg = None,
        pty: bool = False,
        term: Optional[str] = None,
        window: Optional[tuple[int, int]] = None,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
    ) -> ExecStream:
        """Start one command on every host and return an ExecStream of its output as it arrives.

        ``stdin``: None (/dev/null; on a pty, EOF at once), bytes/str (sent, then EOF), a binary file or an
        iterable of bytes (forwarded as read, then EOF), or ``PIPE`` (use write() / close_stdin()). Every host
        gets the same stdin. ``pty=True`` gives the command a pseudo-terminal with ``term`` and ``window``
        (rows, cols); its stdout and stderr then both arrive as "stdout".
        """
        initial: Optional[bytes] = None
        source: Any = None
        if isinstance(stdin, (bytes, bytearray, str)):
            initial = _as_bytes(stdin)
        elif stdin is not None and stdin is not PIPE:
            source = stdin
        stdin_open = stdin is PIPE or source is not None
        request = _command(argv, shell, initial, stdin_open, timeout, env, cwd)
        start = pb.SessionStart(command=request, pty=pty, term=term or "")
        if window is not None:
            start.window.rows, start.window.cols = int(window[0]), int(window[1])
        deadline = timeout + DEADLINE_MARGIN if timeout else NO_TIMEOUT_DEADLINE
        return ExecStream(self, pb.SessionInput(start=start), source, deadline)


class ExecStream(Iterator[tuple[str, str, bytes]]):
    """One command running on every host. Iterate for ``(host, stream, chunk)`` (stream is "stdout" or
    "stderr", chunk bytes, in arrival order across hosts); ``poll()`` also returns each host's exit event.

    After the iteration, ``results`` (Responses: RunReply or HostError per host) and ``exit_codes``
    ({host: int or None}) hold how each host ended. ``send_signal()``, ``write()``, ``close_stdin()``,
    ``resize()`` reach every host. Leaving a ``with`` block (or ``cancel()``) before the end kills the commands.
    """

    def __init__(self, agent: ExecAgent, start: pb.SessionInput, source: Any, deadline: float) -> None:
        self.hosts = agent.hosts
        self._inputs: queue.SimpleQueue[Any] = queue.SimpleQueue()  # reentrant put: safe in signal handlers
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outcomes: dict[str, Any] = {}
        self._finished = threading.Event()
        self._inputs_closed = False
        self._cancelled = False
        self._inputs.put(start)
        self._call: Any = agent.Session(self._requests(), timeout=deadline)
        threading.Thread(target=self._pump, name="sshfleet-exec-pump", daemon=True).start()
        if source is not None:
            threading.Thread(target=self._forward, args=(source,), name="sshfleet-exec-stdin", daemon=True).start()

    # --- inputs -----------------------------------------------------------------------------------------

    def _requests(self) -> Iterator[Any]:
        while True:
            item = self._inputs.get()
            if item is _END:
                return
            yield item

    def _send(self, message: pb.SessionInput) -> None:
        if not self._inputs_closed:
            self._inputs.put(message)

    def write(self, data: Union[bytes, str]) -> None:
        """Send bytes to every host's command (needs stdin=PIPE, or pty=True)."""
        if data:
            self._send(pb.SessionInput(stdin=_as_bytes(data)))

    def close_stdin(self) -> None:
        """EOF on every command's stdin (on a pty: the terminal's EOF character) once what was written is in."""
        self._send(pb.SessionInput(eof=True))

    def send_signal(self, sig: Union[int, str] = "SIGINT") -> None:
        """Send a signal (name or number) to every command's process group."""
        self._send(pb.SessionInput(signal=_signal_number(sig)))  # type: ignore[arg-type]

    def resize(self, rows: int, cols: int) -> None:
        """Tell every pty command its terminal's new size (it gets SIGWINCH)."""
        self._send(pb.SessionInput(window=pb.WindowSize(rows=rows, cols=cols)))

    def _forward(self, source: Any) -> None:
        try:
            fileno = source.fileno() if hasattr(source, "fileno") else None
        except (OSError, ValueError):
            fileno = None
        try:
            if fileno is not None:  # os.read returns what is there now, so lines go out as they are typed
                while not self._finished.is_set() and (data := os.read(fileno, 65536)):
                    self.write(data)
            elif hasattr(source, "read"):
                while not self._finished.is_set() and (data := source.read(65536)):
                    self.write(data)
            else:
                for data in source:
                    if self._finished.is_set():
                        break
                    self.write(data)
        except OSError:
            pass
        finally:
            self.close_stdin()

    # --- outputs ----------------------------------------------------------------------------------------

    def _pump(self) -> None:
        try:
            for host, item in self._call:
                if isinstance(item, HostError):
                    self._exit(host, item)
                    continue
                kind = item.WhichOneof("event")
                if kind == "output":
                    name = "stderr" if item.output.stream == pb.STDERR else "stdout"
                    self._events.put(ExecEvent(host, name, item.output.data))
                elif kind == "exit":
                    self._exit(host, item.exit)
        except CallTimeout as exc:
            for host in self.hosts:
                if host not in self._outcomes:
                    self._exit(host, CallTimeout(host, "Session", exc.code, exc.details))
        except Exception as exc:  # a bug must still end the stream for every host
            for host in self.hosts:
                if host not in self._outcomes:
                    self._exit(host, CallError(host, "Session", "UNKNOWN", repr(exc)))
        finally:
            why = "cancelled by the caller" if self._cancelled else "the session ended without an exit status"
            for host in self.hosts:
                if host not in self._outcomes:
                    self._exit(host, CallError(host, "Session", "CANCELLED", why))
            self._close_inputs()
            self._events.put(_END)

    def _exit(self, host: str, outcome: Any) -> None:
        if host in self._outcomes:
            return
        self._outcomes[host] = outcome
        self._events.put(ExecEvent(host, "exit", outcome))
        if len(self._outcomes) == len(self.hosts):
            self._close_inputs()

    def _close_inputs(self) -> None:
        if not self._inputs_closed:
            self._inputs_closed = True
            self._inputs.put(_END)

    def poll(self, timeout: Optional[float] = None) -> Optional[ExecEvent]:
        """The next event (output or a host's exit), None if none came within ``timeout`` seconds.

        Raises StopIteration once every host has ended and every event was returned.
        """
        if self._finished.is_set():
            raise StopIteration
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is _END:
            self._finished.set()
            raise StopIteration
        return event  # type: ignore[no-any-return]

    def __iter__(self) -> ExecStream:
        return self

    def __next__(self) -> tuple[str, str, bytes]:
        while True:
            event = self.poll()
            if event is not None and event.kind != "exit":
                return event.host, event.kind, event.data

    def wait(self) -> Responses:
        """Consume the rest of the output (discarding it) and return ``results``."""
        for _ in self:
            pass
        return self.results

    @property
    def done(self) -> bool:
        """Every host has ended (an exit status or an error)."""
        return len(self._outcomes) == len(self.hosts)

    @property
    def results(self) -> Responses:
        """How each host ended so far: its RunReply (stdout/stderr empty: they were streamed) or HostError."""
        outcomes = {h: self._outcomes[h] for h in self.hosts if h in self._outcomes}
        return Responses("Session", outcomes, error=ExecAgentException)

    @property
    def exit_codes(self) -> dict[str, Optional[int]]:
        """{host: exit code}, None for a host that gave no exit status (unreachable, cancelled, not done)."""
        codes: dict[str, Optional[int]] = {}
        for host in self.hosts:
            outcome = self._outcomes.get(host)
            codes[host] = None if outcome is None or isinstance(outcome, HostError) else int(outcome.exit_code)
        return codes

    def cancel(self) -> None:
        """Stop waiting: the calls are cancelled, and each host kills its command (SIGTERM, then SIGKILL)."""
        self._cancelled = True
        self._close_inputs()
        with contextlib.suppress(Exception):
            self._call.cancel()

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._finished.is_set():
            self.cancel()
