"""``!cmd`` in ``sshfleet shell``: a shell command line on the selected hosts through the exec agent.

Output is live and prefixed by host (as ``sshfleet run``), or gathered at the end when the shell's output is
``gathered`` (as ``run -b``); then one line per outcome with the exit codes. Ctrl-C once sends SIGINT to the
remote commands' process groups; a second one stops waiting (the commands are killed as their calls end),
and the shell goes on either way.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import IO, Any

from sshfleet._cli._output import STDERR, STDOUT, HostResult, LiveLines, classify, render_gather, summary_lines
from sshfleet._cli._shell_session import Loaded, ShellSession

EXEC_KEY = "exec for !"


def exec_agent(session: ShellSession) -> Loaded:
    """The exec agent serving the current selection, started on first use of ``!`` there. The last few
    selections keep theirs, so going back and forth does not start servicers again."""
    from sshfleet._cli._shell_agents import resolve_agent

    key = tuple(session.selection)
    loaded = session.exec_agents.get(key)
    if loaded is None:
        loaded = Loaded(EXEC_KEY, resolve_agent("exec"))
        session._start(loaded, session.selection)
        session.exec_agents[key] = loaded
        while len(session.exec_agents) > 3:
            oldest = next(iter(session.exec_agents))
            session.exec_agents.pop(oldest).close()
    return loaded


class _Interrupts:
    """SIGINT while the commands run: counted here, acted on by the loop (the first forwards SIGINT to the
    remote commands, the second stops waiting)."""

    def __init__(self) -> None:
        self.count = 0
        self.previous: Any = None

    def __enter__(self) -> _Interrupts:
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)


def _binary(file: IO[str]) -> IO[bytes]:
    file.flush()
    return file.buffer  # type: ignore[attr-defined,no-any-return]


def run_command(session: ShellSession, line: str) -> list[HostResult]:
    """Run ``line`` with /bin/sh -c on every selected host; print output and the per-host outcome."""
    loaded = exec_agent(session)
    gathered = session.settings.output == "gathered"
    started = time.monotonic()
    results: dict[str, HostResult] = {}
    kept: dict[str, dict[str, bytearray]] = {}
    for host, error in loaded.failed().items():
        results[host] = classify(host, error)
    for _, agent in list(loaded.instances):
        serves = [h for h, owner in loaded.owner.items() if owner is agent]
        if serves:
            _run_on(agent, serves, line, gathered, results, kept, session)
    ordered = [results.get(h) or classify(h, None) for h in session.selection if h in loaded.started]
    if gathered:
        for result in ordered:
            streams = kept.get(result.host, {})
            result.stdout, result.stderr = streams.get(STDOUT, bytearray()), streams.get(STDERR, bytearray())
        render_gather(ordered, _binary(sys.stdout), _binary(sys.stdout))
    for text in summary_lines(ordered, time.monotonic() - started):
        session.console.print(text, style="dim", highlight=False, markup=False)
    return ordered


def _run_on(
    agent: Any,
    hosts: list[str],
    line: str,
    gathered: bool,
    results: dict[str, HostResult],
    kept: dict[str, dict[str, bytearray]],
    session: ShellSession,
) -> None:
    tty = sys.stdout.isatty()
    live = None if gathered else LiveLines(agent.hosts, _binary(sys.stdout), _binary(sys.stdout), colour=(tty, tty))
    stream = agent.stream(shell=line, timeout=session.settings.timeout)
    told = False
    with _Interrupts() as interrupts:
        while True:
            if interrupts.count >= 2:
                session.console.print("interrupted: not waiting for the remaining hosts", style="yellow")
                stream.cancel()
                break
            if interrupts.count == 1 and not told:
                told = True
                stream.send_signal("SIGINT")
                running = [h for h in hosts if h not in results]
                session.console.print(
                    f"interrupt: sent SIGINT to {len(running)} running command(s) (Ctrl-C again to stop waiting)",
                    style="yellow",
                )
            try:
                event = stream.poll(0.1)
            except StopIteration:
                break
            if event is None:
                continue
            if event.kind == "exit":
                if event.host in hosts:
                    results[event.host] = classify(event.host, event.data)
                if live is not None:
                    live.end(event.host)
            elif gathered:
                kept.setdefault(event.host, {}).setdefault(event.kind, bytearray()).extend(event.data)
            elif live is not None:
                live.feed(event.host, event.kind, event.data)
    for host in hosts:
        if host not in results:
            results[host] = classify(host, None)
