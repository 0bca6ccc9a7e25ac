"""``sshfleet generate PROTO... [-o DIR] [--force] [-I DIR]``: write an agent's modules from its .proto."""

from __future__ import annotations

import argparse

from sshfleet._cli import EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate an agent's client and servicer template from its .proto",
        description=(
            "For each NAME.proto write NAME_pb2.py, NAME_pb2.pyi, NAME_pb2_grpc.py and the client NAME.py "
            "(always regenerated), and the servicer template NAME_servicer.py (only if missing, or with "
            "--force: it holds your implementation)."
        ),
    )
    parser.add_argument("protos", nargs="+", metavar="PROTO", help=".proto file defining one service")
    parser.add_argument(
        "-o", "--out", metavar="DIR", default=None, help="output directory (default: each proto's directory)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing NAME_servicer.py")
    parser.add_argument(
        "-I",
        "--include",
        metavar="DIR",
        action="append",
        default=[],
        help="extra directory to search for imported .proto files (repeatable)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `sshfleet --help` does not load grpc_tools and protobuf.
    from sshfleet._codegen import generate

    results = generate(args.protos, args.out, force=args.force, include_dirs=args.include)
    for result in results:
        if result.action == "kept":
            print(f"kept {result.path} (exists; --force overwrites it)")
        else:
            print(f"{result.action} {result.path}")
    return EXIT_OK
