"""What the fleet subcommands share: the SSH connection flags and the SshOptions they make."""

from __future__ import annotations

import argparse
from typing import Any, Union

from sshfleet._options import TRANSPORTS, SshOptions, Timeouts

_Group = Union[argparse.ArgumentParser, "argparse._ArgumentGroup"]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_connection_options(group: _Group, *, timeout_flag: str, forks_help: str, transport: bool = False) -> None:
    """-F, --known-hosts, --accept-new, -u, --forks, --transport and the connect deadline (named ``timeout_flag``:
    ``ping`` calls it --timeout, ``run`` --connect-timeout because its --timeout limits the command)."""
    group.add_argument(
        "-F", "--ssh-config", metavar="FILE", default=None, help="ssh_config file (default: ~/.ssh/config)"
    )
    group.add_argument(
        "--known-hosts", metavar="FILE", default=None, help="known_hosts file (default: as ssh_config says)"
    )
    group.add_argument(
        "--accept-new", action="store_true", help="trust and record keys of hosts not yet in known_hosts"
    )
    group.add_argument("-u", "--user", metavar="USER", default=None, help="login user for every host")
    group.add_argument("--forks", type=positive_int, default=64, metavar="N", help=forks_help)
    group.add_argument(
        timeout_flag,
        dest="connect_timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="deadline of each connect phase: TCP, then SSH handshake + auth (default 10 and 20)",
    )
    if transport:
        group.add_argument(
            "--transport",
            choices=TRANSPORTS,
            default="paramiko",
            help="SSH implementation: paramiko (default) or openssh (the ssh binary with a ControlMaster per host)",
        )


def options_from_args(args: argparse.Namespace) -> SshOptions:
    """SshOptions from the flags of add_connection_options(); unset flags keep ssh_config's and the defaults."""
    changes: dict[str, Any] = {
        "forks": args.forks,
        "user": args.user,
        "known_hosts": args.known_hosts,
        "transport": getattr(args, "transport", "paramiko"),
    }
    if args.ssh_config is not None:
        changes["ssh_config"] = args.ssh_config
    if args.accept_new:
        changes["host_key_policy"] = "accept-new"
    if args.connect_timeout is not None:
        changes["timeouts"] = Timeouts(connect=args.connect_timeout, auth=args.connect_timeout)
    return SshOptions().replace(**changes)
