"""Output of ``sshfleet run``: host-prefixed live lines, per-host results, gathering, summary, JSON, progress.

Pure logic over bytes and plain values (no SSH, no gRPC), so all of it is unit-tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from sshfleet._cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from sshfleet.inventory import fold_hosts

STDOUT, STDERR = "stdout", "stderr"
# Result statuses, in the order the summary lists them.
STATUSES = ("ok", "failed", "not_started", "unreachable", "interrupted")
STATUS_WORDS = {
    "ok": "ok",
    "failed": "failed",
    "not_started": "not started",
    "unreachable": "unreachable",
    "interrupted": "interrupted",
}
# How a host that never gave an exit status is described, by HostError.kind.
ERROR_WORDS = {"error": "unreachable", "channel_failed": "connection lost", "timeout": "call timed out"}
# Prefix colours cycle over hosts; stderr lines get the same colour, dimmed, so hosts stay recognisable.
PALETTE = ("cyan", "green", "magenta", "blue", "yellow", "bright_cyan", "bright_green", "bright_magenta")


# --- live lines -----------------------------------------------------------------------------------------


class LineBuffer:
    """Splits each (host, stream) byte flow into lines; a partial line waits for its newline or the end.

    ``strip_cr`` drops the carriage return of CRLF endings (pty output) so prefixed lines look like the rest.
    """

    def __init__(self, strip_cr: bool = False) -> None:
        self.strip_cr = strip_cr
        self._partial: dict[tuple[str, str], bytes] = {}

    def feed(self, host: str, stream: str, data: bytes) -> list[bytes]:
        """The complete lines that ``data`` ends (without their newline); keeps the unfinished rest."""
        key = (host, stream)
        pending = self._partial.pop(key, b"") + data
        *lines, rest = pending.split(b"\n")
        if rest:
            self._partial[key] = rest
        return [self._clean(line) for line in lines]

    def flush(self, host: str) -> list[tuple[str, bytes]]:
        """The host's unfinished lines, (stream, line), at the end of its output."""
        out = []
        for stream in (STDOUT, STDERR):
            rest = self._partial.pop((host, stream), None)
            if rest:
                out.append((stream, self._clean(rest)))
        return out

    def _clean(self, line: bytes) -> bytes:
        return line[:-1] if self.strip_cr and line.endswith(b"\r") else line


def ansi_prefix(text: str, style: str) -> bytes:
    """``text`` wrapped in the escape codes rich uses for ``style`` on this terminal."""
    import io

    from rich.console import Console
    from rich.text import Text

    console = Console(file=io.StringIO(), force_terminal=True, width=1000, highlight=False)
    with console.capture() as captured:
        console.print(Text(text, style=style), end="")
    return captured.get().encode()


def make_prefixes(hosts: Sequence[str], colour_out: bool, colour_err: bool) -> dict[str, dict[str, bytes]]:
    """host -> {stream: prefix bytes}: ``"node1:  "`` padded to the longest name, coloured for terminals."""
    width = max((len(h) for h in hosts), default=0) + 1
    prefixes: dict[str, dict[str, bytes]] = {}
    for index, host in enumerate(hosts):
        text = f"{host + ':':<{width}} "
        style = PALETTE[index % len(PALETTE)]
        prefixes[host] = {
            STDOUT: ansi_prefix(text, style) if colour_out else text.encode(),
            STDERR: ansi_prefix(text, f"dim {style}") if colour_err else text.encode(),
        }
    return prefixes


class LiveLines:
    """Writes each complete line as ``prefix + line``; stdout lines to ``out``, stderr lines to ``err``.

    ``colour`` says, for (out, err), whether the prefixes get colours (when that file is a terminal).
    """

    def __init__(
        self,
        hosts: Sequence[str],
        out: IO[bytes],
        err: IO[bytes],
        colour: tuple[bool, bool] = (False, False),
        strip_cr: bool = False,
        before_write: Optional[Callable[[], None]] = None,
    ) -> None:
        self.buffer = LineBuffer(strip_cr)
        self.prefixes = make_prefixes(hosts, *colour)
        self.files = {STDOUT: out, STDERR: err}
        self.before_write = before_write  # e.g. clear the progress line first

    def feed(self, host: str, stream: str, data: bytes) -> None:
        lines = self.buffer.feed(host, stream, data)
        if lines:
            self._write(host, [(stream, line) for line in lines])

    def end(self, host: str) -> None:
        """The host is done: its unfinished lines go out, with a newline."""
        rest = self.buffer.flush(host)
        if rest:
            self._write(host, rest)

    def _write(self, host: str, lines: Iterable[tuple[str, bytes]]) -> None:
        if self.before_write is not None:
            self.before_write()
        touched = set()
        for stream, line in lines:
            self.files[stream].write(self.prefixes[host][stream] + line + b"\n")
            touched.add(stream)
        for stream in touched:
            self.files[stream].flush()


# --- per-host results -----------------------------------------------------------------------------------


@dataclass
class HostResult:
    """How one host ended, whatever the reason: the fields of ``--json`` plus a one-line ``label``."""

    host: str
    status: str
    label: str
    exit_code: Optional[int] = None
    signal: int = 0
    timed_out: bool = False
    error: Optional[dict[str, Any]] = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "error": self.error,
        }


def signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(host: str, outcome: Any) -> HostResult:
    """A HostResult from a host's outcome: a RunReply-like object (exit_code, signal, timed_out, started,
    comment), an error with ``to_dict()`` and ``message`` (a HostError), or None (no outcome: interrupted)."""
    if outcome is None:
        return HostResult(host, "interrupted", "interrupted (no exit status)")
    if hasattr(outcome, "to_dict") and hasattr(outcome, "message"):
        first = (outcome.message.splitlines() or [""])[0]
        phase = getattr(outcome, "phase", None)
        reason = f"{phase}: {first}" if phase and not first.startswith(f"{phase}:") else first
        kind = getattr(outcome, "kind", "error")
        word = ERROR_WORDS.get(kind, kind.replace("_", " "))
        return HostResult(host, "unreachable", f"{word} ({reason})", error=outcome.to_dict())
    if not outcome.started:
        error = {"kind": "not_started", "message": outcome.comment}
        return HostResult(host, "not_started", f"could not start ({outcome.comment})", outcome.exit_code, error=error)
    code, signum, timed_out = int(outcome.exit_code), int(outcome.signal), bool(outcome.timed_out)
    result = HostResult(host, "failed", "", code, signum, timed_out)
    if timed_out:
        result.label = f"failed ({outcome.comment or 'timed out'})"
    elif signum:
        result.label = f"failed (killed by {signal_name(signum)})"
    elif code:
        result.label = f"failed (exit {code})"
    else:
        result.status, result.label = "ok", "ok"
    return result


def exit_status(results: Iterable[HostResult]) -> int:
    """EXIT_UNREACHABLE if a host could not run the command, else EXIT_FAILED if one failed, else EXIT_OK."""
    statuses = {r.status for r in results}
    if statuses & {"unreachable", "not_started", "interrupted"}:
        return EXIT_UNREACHABLE
    if "failed" in statuses:
        return EXIT_FAILED
    return EXIT_OK


def summary_lines(results: Sequence[HostResult], elapsed: float) -> list[str]:
    """Hosts grouped by identical label (``node[01-03,05]: ok``), then one counting line."""
    by_label: dict[tuple[int, str], list[str]] = {}
    for r in results:
        by_label.setdefault((STATUSES.index(r.status), r.label), []).append(r.host)
    lines = [f"{fold_hosts(hosts)}: {label}" for (_, label), hosts in sorted(by_label.items())]
    counts = [f"{n} {STATUS_WORDS[s]}" for s in STATUSES if (n := sum(1 for r in results if r.status == s))]
    noun = "host" if len(results) == 1 else "hosts"
    lines.append(f"{len(results)} {noun}: {', '.join(counts)} in {elapsed:.2f}s")
    return lines


def to_json(results: Sequence[HostResult]) -> dict[str, dict[str, Any]]:
    return {r.host: r.to_dict() for r in results}


# --- gather (-b) ----------------------------------------------------------------------------------------


def gather(results: Sequence[HostResult]) -> list[tuple[list[str], HostResult]]:
    """Hosts with identical (stdout, stderr, label) together, in order of each group's first host."""
    groups: dict[tuple[bytes, bytes, str], list[HostResult]] = {}
    for r in results:
        groups.setdefault((bytes(r.stdout), bytes(r.stderr), r.label), []).append(r)
    return [([r.host for r in members], members[0]) for members in groups.values()]


def render_gather(results: Sequence[HostResult], out: IO[bytes], err: IO[bytes]) -> None:
    """clush -b style: a header naming the folded hosts (and how they ended, unless ok), then the output.

    Hosts that produced nothing and ended ok are only in the summary.
    """
    for hosts, r in gather(results):
        if not r.stdout and not r.stderr and r.status == "ok":
            continue
        label = fold_hosts(hosts) + (f" ({len(hosts)})" if len(hosts) > 1 else "")
        if r.status != "ok":
            label += f" {r.label}"
        rule = b"-" * min(max(len(label), 15), 80)
        header = rule + b"\n" + label.encode() + b"\n" + rule + b"\n"
        if r.stdout or not r.stderr:
            out.write(header + _terminated(r.stdout))
            out.flush()
        if r.stderr:
            err.write(header + _terminated(r.stderr))
            err.flush()


def _terminated(data: bytes | bytearray) -> bytes:
    return bytes(data) if not data or data.endswith(b"\n") else bytes(data) + b"\n"


# --- progress -------------------------------------------------------------------------------------------


class Progress:
    """``[done/total]`` redrawn in place on a terminal, once the run has lasted ``after`` seconds."""

    def __init__(self, file: IO[str], total: int, enabled: bool, after: float = 1.0) -> None:
        self.file = file
        self.total = total
        self.enabled = enabled
        self.shown = False
        self.started = time.monotonic()
        self.after = after
        self.last = ""

    def draw(self, done: int, running: Optional[Sequence[str]] = None) -> None:
        if not self.enabled or time.monotonic() - self.started < self.after:
            return
        text = f"[{done}/{self.total} done, {time.monotonic() - self.started:.0f}s]"
        if running is not None and 0 < len(running) <= 8:
            text += " waiting for " + fold_hosts(running)
        if text != self.last or not self.shown:
            self.file.write("\r\x1b[K" + text)
            self.file.flush()
            self.shown, self.last = True, text

    def clear(self) -> None:
        if self.shown:
            self.file.write("\r\x1b[K")
            self.file.flush()
            self.shown = False
