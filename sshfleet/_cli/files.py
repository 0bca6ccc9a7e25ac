"""``sshfleet put`` / ``get`` / ``sync``: files to and from every host, over the hosts' SSH connections (SFTP).

``put LOCAL REMOTE`` copies a file or tree to every host as scp would place it; ``get REMOTE LOCAL_DIR`` saves
each host's copy as ``LOCAL_DIR/HOST/NAME`` (ClusterShell's --rcopy keeps hosts apart by name the same way);
``sync LOCAL_DIR REMOTE_DIR`` is ``rsync -a LOCAL_DIR/ REMOTE_DIR/`` (size + mtime, ``--delete``). The work is
``Fleet.put/get/sync``; this module parses, shows progress and reports.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from typing import Any, Optional

from sshfleet._cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from sshfleet._cli._common import (
    add_connection_options,
    add_host_options,
    cli_text,
    options_from_args,
    positive_float,
    print_host_list,
)
from sshfleet.errors import ConnectError, HostError, UsageError

COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (positional words, help, description)
    "put": (
        "LOCAL REMOTE",
        "copy a local file or directory to every host",
        "Copy LOCAL (a file or a directory tree) to REMOTE on every host, in parallel. As with scp, it lands "
        "inside REMOTE when REMOTE is a directory or ends with /, else it is written as REMOTE. Each file is "
        "written under a temporary name and renamed into place, so no host ever has half a file under the "
        "final name; modes and modification times are kept (--mode sets the files' mode).",
    ),
    "get": (
        "REMOTE LOCAL_DIR",
        "copy a file or directory from every host into LOCAL_DIR/HOST/",
        "Copy REMOTE (a file, a directory tree, or a glob such as '/var/log/*.log') from every host, in "
        "parallel, into LOCAL_DIR/HOST/ (one directory per host, named after it). Each file is written under a "
        "temporary name and renamed into place; modes and modification times are kept.",
    ),
    "sync": (
        "LOCAL_DIR REMOTE_DIR",
        "make a directory on every host match a local one (rsync -a style)",
        "Make REMOTE_DIR on every host hold what LOCAL_DIR holds, like rsync -a LOCAL_DIR/ REMOTE_DIR/: only "
        "files whose size or modification time differ are sent; --delete removes what is on a host and not "
        "here.",
    ),
}

EPILOG = """\
exit status:
  0    every host succeeded
  1    the transfer failed on some host (missing path, permission, no space, link lost, --timeout)
  3    some host could not be reached (3 wins over 1)
  2    usage error (a missing LOCAL path is one: nothing is sent then)

examples:
  sshfleet put -i lab.ini web ./app.conf /etc/app/
  sshfleet get -H node[01-08] /var/log/syslog logs/        # logs/node01/syslog, logs/node02/syslog, ...
  sshfleet sync -i lab.ini --delete ./site /srv/www
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, (words, summary, description) in COMMANDS.items():
        parser = subparsers.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, 100),
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            usage=f"%(prog)s [-i INVENTORY [PATTERN] | -H HOSTS] [options] {words}",
        )
        where = parser.add_argument_group("hosts")
        add_host_options(where, pattern=False, list_hosts=True)
        parser.add_argument("words", nargs="+", metavar="[PATTERN] " + words, help=argparse.SUPPRESS)
        what = parser.add_argument_group("transfer")
        if name == "put":
            what.add_argument("--mode", type=_octal, metavar="OCTAL", help="mode of the files written (e.g. 600)")
        if name == "sync":
            what.add_argument("--delete", action="store_true", help="remove what is on a host and not in LOCAL_DIR")
        what.add_argument(
            "--timeout",
            type=positive_float,
            metavar="SECONDS",
            help="give up on a host whose transfer takes longer (it then counts as failed)",
        )
        what.add_argument(
            "--json", action="store_true", help="print one JSON object {host: {ok, reply: {files, bytes, ...}}}"
        )
        ssh = parser.add_argument_group("connection")
        add_connection_options(
            ssh, timeout_flag="--connect-timeout", forks_help="hosts transferring at once (default 64)", transport=True
        )
        parser.set_defaults(func=run, files_command=name)


def _octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an octal mode such as 644, got {text!r}") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"must be between 0 and 7777, got {text}")
    return value


def split_words(args: argparse.Namespace) -> tuple[Optional[str], str, str]:
    """``[PATTERN] A B`` -> (pattern, a, b); a PATTERN needs -i."""
    words = list(args.words)
    wanted = COMMANDS[args.files_command][0]
    if len(words) == 3:
        if not args.inventory:
            raise UsageError(f"too many arguments: give {wanted} (a PATTERN needs -i INVENTORY)")
        return words[0], words[1], words[2]
    if len(words) != 2:
        raise UsageError(f"give {wanted}" + (" (after the optional PATTERN)" if args.inventory else ""))
    return None, words[0], words[1]


def _describe(outcome: Any) -> str:
    if isinstance(outcome, HostError):
        return cli_text(outcome.message)
    seconds = max(outcome.seconds, 1e-6)
    files = f"{outcome.files} file{'s' if outcome.files != 1 else ''}"
    text = f"{files}, {_size(outcome.bytes)} in {outcome.seconds:.2f}s ({_size(outcome.bytes / seconds)}/s)"
    if "skipped" in outcome:
        text += f", {outcome.skipped} up to date, {outcome.deleted} deleted"
    return text


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def exit_code(outcomes: dict[str, Any]) -> int:
    if any(isinstance(o, ConnectError) for o in outcomes.values()):
        return EXIT_UNREACHABLE
    if any(isinstance(o, HostError) for o in outcomes.values()):
        return EXIT_FAILED
    return EXIT_OK


class _Bars:
    """Bytes and rate per host on stderr (rich), only on a terminal; a no-op otherwise."""

    def __init__(self, hosts: list[str], enabled: bool) -> None:
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        width = max(len(h) for h in hosts)
        self.tasks = {h: self.progress.add_task(h.ljust(width), total=None) for h in hosts}

    def update(self, host: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.tasks[host], completed=done, total=total or None)

    def __enter__(self) -> _Bars:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def run(args: argparse.Namespace) -> int:
    from sshfleet._cli._common import select_hosts
    from sshfleet._fleet import Fleet

    command = args.files_command
    started = time.monotonic()
    try:
        args.pattern, first, second = split_words(args)
        if args.list_hosts:
            print_host_list(select_hosts(args, allow_empty=True))
            return EXIT_OK
        specs = select_hosts(args)
        with Fleet(specs, ssh_options=options_from_args(args)) as fleet:
            bars = _Bars(fleet.hosts, enabled=_is_tty(sys.stderr) and not args.json)
            with bars:
                if command == "put":
                    responses = fleet.put(first, second, mode=args.mode, timeout=args.timeout, on_progress=bars.update)
                elif command == "get":
                    responses = fleet.get(first, second, timeout=args.timeout, on_progress=bars.update)
                else:
                    responses = fleet.sync(
                        first, second, delete=args.delete, timeout=args.timeout, on_progress=bars.update
                    )
    except UsageError as exc:
        print(f"sshfleet {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    outcomes = dict(responses)
    if args.json:
        print(json.dumps(responses.to_dict(), indent=2))
    else:
        width = max(len(h) for h in outcomes)
        for host, outcome in outcomes.items():
            state = "ok" if not isinstance(outcome, HostError) else outcome.kind.replace("_", " ").upper()
            line = f"{host:<{width}}  {state}: {_describe(outcome)}"
            print(line, file=sys.stdout if state == "ok" else sys.stderr)
    failed = sum(isinstance(o, HostError) for o in outcomes.values())
    noun = "host" if len(outcomes) == 1 else "hosts"
    summary = f"{len(outcomes)} {noun}: {len(outcomes) - failed} ok"
    print(f"sshfleet {command}: {summary}, {failed} failed in {time.monotonic() - started:.2f}s", file=sys.stderr)
    return exit_code(outcomes)
