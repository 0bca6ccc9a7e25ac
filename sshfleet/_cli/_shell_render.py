"""How a call's ``Responses`` are shown: one row per host (or per group of identical rows), JSON, exit status.

Pure logic over Responses and protobuf messages (no SSH), so it is unit-tested; ``print_*`` take a rich
Console so the shell and ``sshfleet call`` print the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from sshfleet._cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from sshfleet._cli._common import cli_text
from sshfleet.errors import CallError, HostError
from sshfleet.inventory import fold_hosts

if TYPE_CHECKING:
    from rich.console import Console

    from sshfleet._responses import Responses

OK, FAILED, UNREACHABLE = "ok", "failed", "unreachable"
STATUS_STYLES = {OK: "green", FAILED: "red", UNREACHABLE: "yellow"}
_MAX_VALUE = 60  # characters of one value shown in a table cell


@dataclass(frozen=True)
class Row:
    """One line of the table: the hosts it stands for (one, or several when gathered), how they ended, and
    the reply's fields or the error as text."""

    hosts: tuple[str, ...]
    status: str
    text: str
    seconds: Optional[float] = None  # how long the host took to answer (the slowest, when gathered)

    @property
    def label(self) -> str:
        return fold_hosts(list(self.hosts)) + (f" ({len(self.hosts)})" if len(self.hosts) > 1 else "")


def outcome_status(responses: Responses, host: str) -> str:
    """ok; failed (the call failed on the host, or its reply says ``success: false``); unreachable (the host
    has no servicer: connect, bootstrap or a lost connection)."""
    outcome = responses[host]
    if isinstance(outcome, HostError):
        return FAILED if isinstance(outcome, CallError) else UNREACHABLE
    return OK if responses.ok(host) else FAILED


def exit_status(responses: Responses) -> int:
    """As ``sshfleet run``: 3 when a host was unreachable, else 1 when a call failed somewhere, else 0."""
    statuses = {outcome_status(responses, host) for host in responses}
    if UNREACHABLE in statuses:
        return EXIT_UNREACHABLE
    if FAILED in statuses:
        return EXIT_FAILED
    return EXIT_OK


def _short(text: str) -> str:
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def format_value(value: Any) -> str:
    """A field's value as a table shows it: text bare unless it has spaces, bytes as b'...', nested messages
    and lists in Python's notation."""
    if isinstance(value, str):
        return _short(value) if value and not any(ch.isspace() for ch in value) else _short(repr(value))
    if isinstance(value, (bytes, bytearray)):
        return _short(repr(bytes(value)))
    if hasattr(value, "ListFields"):
        inner = ", ".join(f"{f.name}: {format_value(v)}" for f, v in value.ListFields())
        return _short("{" + inner + "}")
    if isinstance(value, Mapping):
        return _short("{" + ", ".join(f"{k!r}: {format_value(v)}" for k, v in value.items()) + "}")
    if hasattr(value, "__iter__"):
        return _short("[" + ", ".join(format_value(v) for v in value) + "]")
    return _short(str(value))


def _enum_name(field: Any, value: Any) -> Any:
    if field.enum_type is None:
        return value
    known = field.enum_type.values_by_number.get(value)
    return known.name if known is not None else value


def reply_text(reply: Any) -> str:
    """``field=value`` for each field of the reply but ``success`` (the status column says it): numbers,
    bools and enums (by name) always, so ``index=0`` shows; text, bytes, lists and messages when not empty."""
    if not hasattr(reply, "DESCRIPTOR"):
        return format_value(reply)
    parts = []
    for field in reply.DESCRIPTOR.fields:
        if field.name == "success":
            continue
        value = getattr(reply, field.name)
        if _repeated(field):
            if not len(value):
                continue
            shown: Any = value if hasattr(value, "items") else [_enum_name(field, v) for v in value]
        elif field.message_type is not None:
            if not reply.HasField(field.name):
                continue
            shown = value
        elif isinstance(value, (str, bytes)):
            if not value:
                continue
            shown = value
        else:
            shown = _enum_name(field, value)
        parts.append(f"{field.name}={format_value(shown)}")
    return "  ".join(parts)


def _repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)
    return bool(field.label == field.LABEL_REPEATED) if repeated is None else bool(repeated)


def error_text(error: HostError) -> str:
    """The first line of a host's error: ``DEADLINE_EXCEEDED: ...``, ``tcp: connection refused``, ..."""
    if isinstance(error, CallError):
        first = (error.details.splitlines() or [""])[0]
        return f"{error.code}: {first}"
    first = cli_text((error.message.splitlines() or [""])[0])
    phase = getattr(error, "phase", None)
    return f"{phase}: {first}" if phase and not first.startswith(f"{phase}:") else first


def rows(responses: Responses, *, gathered: bool = False, times: Optional[Mapping[str, float]] = None) -> list[Row]:
    """One Row per host in host order; with ``gathered``, hosts whose rows are identical share one. ``times``
    gives each host's answer time in seconds (a host that was not asked, e.g. never started, has none)."""
    out: dict[Any, list[str]] = {}
    order: list[Any] = []
    for index, host in enumerate(responses):
        outcome = responses[host]
        text = error_text(outcome) if isinstance(outcome, HostError) else reply_text(outcome)
        key: Any = (outcome_status(responses, host), text)
        if not gathered:
            key = (*key, index)
        if key not in out:
            out[key] = []
            order.append(key)
        out[key].append(host)
    result = []
    for key in order:
        hosts = out[key]
        known = [times[h] for h in hosts if times is not None and h in times]
        result.append(Row(tuple(hosts), key[0], key[1], max(known) if known else None))
    return result


def summary(responses: Responses, seconds: float) -> str:
    """``8 hosts: 7 ok, 1 failed in 0.05s``."""
    counts: dict[str, int] = {}
    for host in responses:
        status = outcome_status(responses, host)
        counts[status] = counts.get(status, 0) + 1
    parts = [f"{counts[s]} {s}" for s in (OK, FAILED, UNREACHABLE) if s in counts]
    noun = "host" if len(responses) == 1 else "hosts"
    return f"{len(responses)} {noun}: {', '.join(parts) or 'nothing'} in {seconds:.2f}s"


def print_table(
    console: Console,
    responses: Responses,
    seconds: float,
    *,
    gathered: bool = False,
    times: Optional[Mapping[str, float]] = None,
) -> None:
    """The per-host table (host, status, reply or error, and each host's time when ``times`` is given) and a
    summary line under it."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("host", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column(f"{responses.method} reply / error", overflow="fold")
    if times is not None:
        table.add_column("time", justify="right", no_wrap=True)
    for row in rows(responses, gathered=gathered, times=times):
        cells: list[Any] = [Text(row.label), Text(row.status, style=STATUS_STYLES[row.status]), Text(row.text)]
        if times is not None:
            cells.append("-" if row.seconds is None else f"{row.seconds:.3f}s")
        table.add_row(*cells)
    console.print(table)
    console.print(Text(summary(responses, seconds), style="dim"))


def to_json(responses: Responses) -> str:
    """``{host: {"ok": bool, "status": ..., "reply": {...}} or {..., "error": {...}}}``, one JSON document
    (ProtoJSON field names; 64-bit integers as strings, bytes as base64)."""
    import json

    data = responses.to_dict()
    for host, entry in data.items():
        entry["status"] = outcome_status(responses, host)
    return json.dumps(data, indent=2)


def stream_line(host: str, reply: Any, width: int) -> str:
    """One streamed message as ``host:  field=value ...`` (or the host's error), padded to ``width``."""
    text = f"ERROR {error_text(reply)}" if isinstance(reply, HostError) else reply_text(reply)
    return f"{host + ':':<{width + 1}} {text}"
