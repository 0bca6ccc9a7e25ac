"""``sshfleet testbed up N | down | status``: real sshd hosts on this machine, for trying sshfleet out.

``up`` prints everything needed to use the hosts (ssh_config, known_hosts, inventory); ``down`` removes all of
it and is idempotent; ``status`` says, per host, whether its sshd runs and answers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sshfleet._cli import EXIT_FAILED, EXIT_OK


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "testbed",
        help="real sshd hosts on this machine in network namespaces (needs root)",
        description="N real OpenSSH hosts on this machine, each in its own network namespace (needs root).",
    )
    actions = parser.add_subparsers(dest="testbed_action", metavar="ACTION")
    actions.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default="sf", help="testbed name: several can exist at once (default: sf)")
        p.add_argument("--state-dir", help="where its files live (default: /tmp/sshfleet-testbed-NAME)")

    up = actions.add_parser("up", help="create N hosts node01..nodeNN")
    up.add_argument("n", type=int, metavar="N", help="number of hosts (1-99)")
    up.add_argument(
        "--shared-home",
        action="store_true",
        help="one ~/.cache shared by all hosts, as with an NFS home (/tmp stays private)",
    )
    common(up)
    up.set_defaults(func=_up)

    down = actions.add_parser("down", help="remove the testbed (idempotent)")
    common(down)
    down.set_defaults(func=_down)

    status = actions.add_parser("status", help="which hosts are up and whether their sshd answers")
    common(status)
    status.set_defaults(func=_status)


def _up(args: argparse.Namespace) -> int:
    from sshfleet.testbed import Testbed, TestbedError

    bed = Testbed(args.name, args.n, shared_home=args.shared_home, state_dir=args.state_dir)
    try:
        bed.up()
    except TestbedError as exc:
        print(f"sshfleet testbed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    home = "shared ~/.cache" if bed.shared_home else "private ~/.cache"
    print(f"testbed {bed.name}: {len(bed.hosts)} hosts on bridge {bed.bridge} ({bed.controller_address})")
    print(f"  logins: root and fleet with the client key; private /tmp, {home} per host")
    for host in bed.hosts:
        print(f"  {host.name}  {host.address:<15}  netns {host.netns}")
    print(f"ssh_config   {bed.ssh_config}")
    print(f"known_hosts  {bed.known_hosts}")
    print(f"inventory    {bed.inventory}")
    print(f"hosts file   {bed.hosts_file}")
    print(f"client key   {bed.client_key}")
    print(f"state dir    {bed.state_dir}")
    print(f"try: ssh -F {bed.ssh_config} {bed.hosts[0].name} hostname")
    return EXIT_OK


def _down(args: argparse.Namespace) -> int:
    from sshfleet.testbed import Testbed, TestbedError

    try:
        Testbed(args.name, state_dir=args.state_dir).down()
    except TestbedError as exc:
        print(f"sshfleet testbed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"testbed {args.name}: down")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from sshfleet.testbed import Testbed, TestbedError

    try:
        bed = Testbed.load(args.name, state_dir=args.state_dir)
    except TestbedError as exc:
        print(f"sshfleet testbed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"testbed {bed.name}: {len(bed.hosts)} hosts, bridge {bed.bridge}, state dir {bed.state_dir}")
    healthy = True
    for host in bed.hosts:
        pid = bed.sshd_pid(host)
        answers = pid is not None and bed.answers(host)
        healthy = healthy and answers
        sshd = f"sshd pid {pid}" if pid is not None else "sshd not running"
        print(f"  {host.name}  {host.address:<15}  {sshd:<18}  {'answers' if answers else 'DOES NOT ANSWER'}")
    return EXIT_OK if healthy else EXIT_FAILED
