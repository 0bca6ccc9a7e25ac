"""The ``sshfleet`` command line: one module per subcommand, each with ``register(subparsers)``.

A subcommand module adds its parser and sets ``func`` (``args -> exit code``). Subcommands import their heavy
dependencies lazily so ``sshfleet --help`` and ``sshfleet ping`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from sshfleet.errors import SshFleetError

# Order is the order in --help. A module registers one or more subcommands ("files": put, get, sync).
SUBCOMMANDS = ("ping", "run", "call", "shell", "files", "testbed", "generate", "wheelhouse")

EXIT_OK = 0
EXIT_FAILED = 1  # some command / call failed on a host
EXIT_UNREACHABLE = 3  # some host could not be reached or bootstrapped
EXIT_USAGE = 2  # argparse's own code for bad usage


# The subcommand each module registers, for loading only the one a command line names.
MODULE_OF = {"put": "files", "get": "files", "sync": "files"}


def _named_module(argv: Optional[Sequence[str]]) -> Optional[str]:
    """The module of the subcommand ``argv`` names (its first word that is not an option: the top-level
    options take no value), or None (no subcommand, or an unknown one: every module, for help and errors)."""
    for word in argv or ():
        if not word.startswith("-"):
            name = MODULE_OF.get(word, word)
            return name if name in SUBCOMMANDS else None
    return None


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The whole command line; with ``argv`` naming a subcommand, only that subcommand's module is imported
    (the others cost ~30 ms of imports that a `sshfleet run` would pay on every start)."""
    parser = argparse.ArgumentParser(
        prog="sshfleet",
        description="Run gRPC agents and commands on a fleet of hosts over SSH, nothing pre-installed.",
    )
    parser.add_argument("-V", "--version", action=_Version, nargs=0, help="show the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    named = _named_module(argv)
    for name in SUBCOMMANDS if named is None else (named,):
        try:
            module = importlib.import_module(f"sshfleet._cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sshfleet._cli.{name}":
                raise
            continue
        module.register(sub)
    # -v after the subcommand too (`sshfleet run -v ...`), as ssh, clush and ansible take it anywhere; its own
    # dest, because a subcommand's parser starts from a fresh namespace: main() adds both counts.
    for subparser in sub.choices.values():
        subparser.add_argument(
            "-v", "--verbose", dest="verbose_after", action="count", default=0, help="more logging (-vv for debug)"
        )
    return parser


class _Version(argparse.Action):
    """argparse's "version" action, asking for the version only when it is shown: importlib.metadata costs
    ~15 ms, which every `sshfleet run` would pay for nothing."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"{parser.prog} {version()}")  # on stdout, as argparse's own version action prints it
        parser.exit()


def version() -> str:
    """The installed distribution's version (pyproject.toml's when installed from this tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("sshfleet")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
    args.verbose += args.verbose_after
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except SshFleetError as exc:
        print(f"sshfleet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sshfleet: interrupted", file=sys.stderr)
        return 130
    return code
