"""``sshfleet wheelhouse --python X.Y --platform TAG [-o DIR]``: fetch host wheels ahead of time.

For a controller without index access: run this where the index is reachable, copy DIR over, and point
``SSHFLEET_WHEELHOUSE`` at it; hosts of those Pythons and platforms then get their grpcio/protobuf from there.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from pathlib import Path

from sshfleet._cli import EXIT_FAILED, EXIT_OK


def python_version(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"3\.(\d+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a Python 3 version such as 3.9, got {text!r}")
    return 3, int(match[1])


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "wheelhouse",
        help="download grpcio/protobuf wheels for host Pythons and platforms (air-gapped controllers)",
        description=(
            "Download into DIR the newest grpcio and protobuf wheels (no newer than this controller's own, and "
            "what they require) published for each --python and --platform, as sshfleet would ship them to such "
            "a host. A controller without index access uses them with SSHFLEET_WHEELHOUSE=DIR."
        ),
    )
    parser.add_argument(
        "--python",
        metavar="X.Y",
        type=python_version,
        action="append",
        required=True,
        help="host Python version (repeatable)",
    )
    parser.add_argument(
        "--platform",
        metavar="TAG",
        action="append",
        default=[],
        help="host platform tag: manylinux2014_aarch64, manylinux_2_31_x86_64, musllinux_1_2_aarch64, ... "
        f"(repeatable; default manylinux2014_{platform.machine()})",
    )
    parser.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        default=None,
        help="where to put the wheels (default: $SSHFLEET_WHEELHOUSE, else the controller's cache)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sshfleet import _payload

    if args.out:
        dest = Path(args.out)
    else:
        offline = _payload.offline_wheelhouses()
        dest = offline[0] if offline else _payload.controller_cache() / "wheelhouse"
    platforms = args.platform or [f"manylinux2014_{platform.machine()}"]
    ceilings = _payload.controller_versions()
    status = EXIT_OK
    for python in args.python:
        for tag in platforms:
            try:
                host = _payload.runtime_for_platform(python, tag)
            except ValueError as exc:
                print(f"sshfleet: error: {exc}", file=sys.stderr)
                return 2
            label = f"Python {host.version_text} {tag}"
            try:
                _payload.fetch_wheels(host, dest, ceilings)
            except _payload.DepsUnavailable as exc:
                print(f"{label}: FAILED: {exc}", file=sys.stderr)
                status = EXIT_FAILED
                continue
            chosen, missing = _payload.select_wheels(dest.glob("*.whl"), host, ceilings)
            got = ", ".join(f"{dist} {wheel.version}" for dist, wheel in sorted(chosen.items()))
            if missing:
                print(f"{label}: FAILED: no wheel of {', '.join(missing)} (have: {got or 'nothing'})", file=sys.stderr)
                status = EXIT_FAILED
            else:
                print(f"{label}: {got}")
    print(f"wheelhouse: {os.path.abspath(dest)}")
    return status
