"""``sshfleet run -t`` with one host and a terminal here: an interactive session, like ``ssh -t host cmd``.

Our terminal goes into raw mode (every key, Ctrl-C included, is a byte for the remote pty, whose line
discipline turns it into SIGINT for the remote foreground job), the window size is sent at start and on every
SIGWINCH, and the terminal is restored on the way out whatever happens (exception, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty
from typing import Any, NoReturn


def window_size(fd: int) -> tuple[int, int]:
    with contextlib.suppress(OSError):
        size = os.get_terminal_size(fd)
        if size.lines and size.columns:
            return size.lines, size.columns
    return 24, 80


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[written:]


def _pump_stdin(fd: int, stream: Any, stop: threading.Event) -> None:
    """Keys to the remote pty as typed; polls so that it stops reading our terminal when the session ends."""
    try:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                data = os.read(fd, 4096)
                if not data:
                    stream.close_stdin()
                    return
                stream.write(data)
    except OSError:
        stream.close_stdin()


def _exit_on_signal(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def run_interactive(agent: Any, args: argparse.Namespace) -> tuple[str, Any]:
    """Run the command on the agent's (an ExecAgent's) only host, wired to our terminal; returns that host and
    how its command ended (its RunReply or HostError), for the caller to classify."""
    pipe = agent.PIPE
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout.flush()
    host = agent.hosts[0]
    saved = termios.tcgetattr(in_fd)
    stream = agent.stream(
        args.argv,
        shell=args.shell,
        stdin=pipe,
        pty=True,
        term=os.environ.get("TERM", "dumb"),
        window=window_size(out_fd),
        timeout=args.timeout,
    )
    stop = threading.Event()
    outcome: Any = None
    previous = {
        signal.SIGWINCH: signal.signal(signal.SIGWINCH, lambda s, f: stream.resize(*window_size(out_fd))),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _exit_on_signal),
        signal.SIGHUP: signal.signal(signal.SIGHUP, _exit_on_signal),
    }
    try:
        tty.setraw(in_fd)  # also clears ISIG: Ctrl-C reaches the remote terminal as a byte
        threading.Thread(target=_pump_stdin, args=(in_fd, stream, stop), name="sshfleet-tty", daemon=True).start()
        while True:
            try:
                event = stream.poll(0.2)
            except StopIteration:
                break
            if event is None:
                continue
            if event.kind == "exit":
                outcome = event.data
            else:
                _write_all(out_fd, event.data)
    finally:
        stop.set()
        termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not stream.done:
            stream.cancel()
    return host, outcome
