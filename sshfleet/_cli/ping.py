"""``sshfleet ping [-i INVENTORY [PATTERN] | -H HOSTS]``: can every host be reached and logged into?

Connects (TCP, SSH handshake, host key, authentication) to every host in parallel and reports per host:
ok with the time it took, or why not (unreachable / auth failed / host key rejected) and in which phase.
Exit status 0 only when every host is ok, else EXIT_UNREACHABLE. ``ping --accept-new`` is also the first
contact with new hosts: it records their keys, which every later command then checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from sshfleet._cli import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from sshfleet._cli._common import (
    add_connection_options,
    add_host_options,
    check_ssh_options,
    cli_text,
    first_contact_hint,
    is_unknown,
    options_from_args,
    print_host_list,
    say,
    select_hosts,
)
from sshfleet._options import HostSpec, SshOptions
from sshfleet.errors import ConnectError, HostError, SshFleetError

LABELS = {
    "ok": "ok",
    "unreachable": "unreachable",
    "auth_failed": "auth failed",
    "hostkey_rejected": "host key rejected",
}
STYLES = {"ok": "green", "unreachable": "red", "auth_failed": "magenta", "hostkey_rejected": "yellow"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ping",
        help="check that every host can be reached and logged into over SSH",
        description=(
            "Connect to every host of the inventory that matches PATTERN (or to the hosts given with -H) in "
            "parallel and report, per host, ok with the time the connect took, or why it failed: unreachable, "
            "auth failed, host key rejected. Exit status 0 when all hosts are ok, 3 otherwise. New hosts: "
            "ping --accept-new records their keys (first contact); later commands check them."
        ),
        usage="%(prog)s [-i INVENTORY [PATTERN] | -H HOSTS] [-x HOSTS] [options]",
    )
    where = parser.add_argument_group("hosts")
    add_host_options(where, list_hosts=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object {host: result}")
    ssh = parser.add_argument_group("connection")
    add_connection_options(ssh, timeout_flag="--timeout", forks_help="connects in flight (default 64)")
    parser.set_defaults(func=run)


@dataclass
class Result:
    status: str
    message: str
    phase: Optional[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "phase": self.phase, "seconds": self.seconds}


def ping(args: argparse.Namespace) -> dict[str, Result]:
    specs = select_hosts(args)
    options = options_from_args(args)
    fast = _ping_with_ssh(specs, options)
    if fast is not None:
        return fast
    # Imported here so that `sshfleet --help` does not load paramiko.
    from sshfleet._fleet import Connected, Fleet

    seconds: dict[str, float] = {}

    def record(name: str, outcome: object, took: float) -> None:
        seconds[name] = took

    results: dict[str, Result] = {}
    with Fleet(specs, ssh_options=options) as fleet:
        for name, outcome in fleet.connect(on_result=record).items():
            took = round(seconds.get(name, 0.0), 3)
            if isinstance(outcome, Connected):
                results[name] = Result("ok", outcome.detail, None, took)
            else:
                phase = outcome.phase if isinstance(outcome, ConnectError) else None
                results[name] = Result(_status(outcome), cli_text(outcome.message), phase, took)
    return results


def _ping_with_ssh(specs: list[HostSpec], options: SshOptions) -> Optional[dict[str, Result]]:
    """With the ssh binary and no jump host: one ``ssh host exit`` per host, which logs in exactly as `run`'s
    fast path will (the same settings, OpenSSH's handshake), and imports no paramiko. None otherwise."""
    from sshfleet._ssh import _oneshot

    hosts = _oneshot.resolve_direct(specs, options)
    if hosts is None:
        return None
    seconds: dict[str, float] = {}
    outcomes = _oneshot.check_logins(
        hosts, forks=options.forks, on_result=lambda name, _, took: seconds.__setitem__(name, round(took, 3))
    )
    results: dict[str, Result] = {}
    for host in hosts:
        outcome = outcomes[host.name]
        if isinstance(outcome, float):
            detail = f"{host.user}@{host.hostname}:{host.port} (OpenSSH)"
            results[host.name] = Result("ok", detail, None, seconds[host.name])
        else:
            message = cli_text(outcome.message)
            results[host.name] = Result(_status(outcome), message, outcome.phase, seconds[host.name])
    return results


def _status(error: HostError) -> str:
    return error.kind if error.kind in LABELS else "unreachable"


def summary(results: dict[str, Result], elapsed: float) -> str:
    counts: dict[str, int] = {}
    for result in results.values():
        counts[result.status] = counts.get(result.status, 0) + 1
    parts = [f"{counts[s]} {LABELS[s]}" for s in LABELS if counts.get(s)]
    noun = "host" if len(results) == 1 else "hosts"
    return f"{len(results)} {noun}: {', '.join(parts)} in {elapsed:.2f}s"


def _detail(result: Result) -> str:
    if result.status == "ok":
        return f"{result.seconds:.3f}s  {result.message}"
    return f"{result.phase}: {result.message}" if result.phase else result.message


def print_plain(results: dict[str, Result], elapsed: float) -> None:
    width = max(len(name) for name in results)
    label_width = max(len(LABELS[r.status]) for r in results.values())
    for name, result in results.items():
        print(f"{name:<{width}}  {LABELS[result.status]:<{label_width}}  {_detail(result)}")
    print(summary(results, elapsed))


def print_rich(results: dict[str, Result], elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("host")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for name, result in results.items():
        style = STYLES[result.status]
        table.add_row(name, Text(LABELS[result.status], style=style), Text(_detail(result)))
    console = Console()
    console.print(table)
    bad = any(r.status != "ok" for r in results.values())
    console.print(Text(summary(results, elapsed), style="bold red" if bad else "bold green"))


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        check_ssh_options(args)
        if args.list_hosts:
            print_host_list(select_hosts(args, allow_empty=True))
            return EXIT_OK
        results = ping(args)
    except SshFleetError as exc:
        print(f"sshfleet ping: {exc}", file=sys.stderr)
        return EXIT_USAGE
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({name: r.to_dict() for name, r in results.items()}, indent=2))
    elif sys.stdout.isatty():
        print_rich(results, elapsed)
    else:
        print_plain(results, elapsed)
    unknown = [name for name, r in results.items() if r.status == "hostkey_rejected" and is_unknown(r.message)]
    hint = first_contact_hint(args, unknown)
    if hint:
        say("ping", hint)
    return EXIT_OK if all(r.status == "ok" for r in results.values()) else EXIT_UNREACHABLE
