"""What the example scripts share: where the hosts come from (an inventory, or a local testbed), and printing.

``--testbed N`` brings up N real sshd hosts on this machine (needs root; see ``sshfleet testbed``) for the
length of the script and takes them down at the end, also on an error, Ctrl-C or SIGTERM.
``-i INVENTORY`` uses real hosts from an Ansible INI/YAML inventory or a plain host list instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pcap_reader import Packet, PcapError, http_request_lines, read_pcap

from sshfleet import HostSpec, Responses, SshOptions
from sshfleet.inventory import load_hosts


@dataclass(frozen=True)
class Host:
    """A host as the scripts need it: the name agents connect to, and the address other hosts reach it at."""

    spec: HostSpec
    address: str

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Fleet:
    """The hosts to run on and how to reach them; ``testbed`` is set when the script made its own."""

    hosts: list[Host]
    ssh_options: SshOptions
    testbed: Optional[object] = None
    controller_address: Optional[str] = None

    def select(self, pattern: str, inventory: Optional[str]) -> list[Host]:
        """Hosts of an inventory pattern (Ansible syntax), keeping inventory order."""
        if inventory is None:
            raise SystemExit("a host pattern needs an inventory (-i)")
        return [_host(spec) for spec in load_hosts(inventory, pattern)]


def _host(spec: HostSpec) -> Host:
    return Host(spec, spec.hostname or spec.name)


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-i", "--inventory", metavar="FILE", help="inventory of real hosts (Ansible INI/YAML or a list)")
    where.add_argument(
        "--testbed",
        type=int,
        metavar="N",
        help="bring up N local sshd hosts (needs root), run on them, take them down at the end",
    )
    parser.add_argument("-F", "--ssh-config", metavar="FILE", help="ssh_config to use (default: ~/.ssh/config)")
    parser.add_argument("-u", "--user", help="login user (default: the inventory's, else ssh_config's, else yours)")


def _interrupt_on_sigterm() -> None:
    """Unwind on SIGTERM/SIGHUP like on Ctrl-C, so `finally` blocks take the testbed down."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


@contextlib.contextmanager
def fleet_from_args(args: argparse.Namespace, min_hosts: int = 1) -> Iterator[Fleet]:
    """The Fleet the command line asks for; a testbed made here is taken down when the block exits."""
    if args.inventory is not None:
        options = SshOptions()
        changes = {"ssh_config": args.ssh_config, "user": args.user}
        options = options.replace(**{k: v for k, v in changes.items() if v is not None})
        yield Fleet([], options)
        return
    from sshfleet.testbed import Testbed

    if args.testbed < min_hosts:
        raise SystemExit(f"--testbed needs at least {min_hosts} hosts")
    if os.geteuid() != 0:
        raise SystemExit("--testbed needs root (network namespaces, veth pairs, sshd on port 22); try sudo")
    _interrupt_on_sigterm()
    # Our pid in the name: two demos never meet, and a testbed of this name can only be a dead run's leftover.
    bed = Testbed(f"demo{os.getpid():x}", args.testbed)
    bed.down()
    started = time.monotonic()
    bed.up()
    try:
        hosts = [Host(HostSpec(h.name, hostname=h.address), h.address) for h in bed.hosts]
        print(
            f"testbed {bed.name}: {len(hosts)} hosts up in {time.monotonic() - started:.1f}s "
            f"({', '.join(f'{h.name} {h.address}' for h in hosts)})"
        )
        options = bed.ssh_options(user=args.user or "root")
        yield Fleet(hosts, options, testbed=bed, controller_address=bed.controller_address)
    finally:
        bed.down()
        print(f"testbed {bed.name}: down")


def report(title: str, responses: Responses) -> bool:
    """Print one step's per-host results under its title; True when every host succeeded."""
    print(title)
    for line in responses.status().splitlines():
        print("  " + line)
    return responses.success()


def started(agents: dict[str, object], seconds: float) -> bool:
    """Print how the agents started; only the hosts that failed are detailed."""
    ok = True
    for role, agent in agents.items():
        responses: Responses = agent.started  # type: ignore[attr-defined]
        if not responses.success():
            ok = False
            report(f"{role}: could not start on every host", responses)
    hosts = sorted({h for agent in agents.values() for h in agent.hosts})  # type: ignore[attr-defined]
    if ok:
        print(f"agents: {', '.join(agents)} started on {len(hosts)} hosts in {seconds:.1f}s")
    return ok


@dataclass
class CaptureSummary:
    path: Path
    packets: int
    http: int  # TCP packets on the HTTP port between a client and the server
    requests: int  # of those, packets that start an HTTP request
    first_request: str


def summarize_capture(path: Path, clients: list[str], server: str, port: int) -> CaptureSummary:
    """Count a capture's packets, and those that are HTTP between one of ``clients`` and ``server``."""
    packets = list(read_pcap(path))

    def is_http(p: Packet) -> bool:
        return p.protocol == "tcp" and p.uses_port(port) and any(p.between(c, server) for c in clients)

    http = [p for p in packets if is_http(p)]
    requests = list(http_request_lines(iter(http)))
    return CaptureSummary(path, len(packets), len(http), len(requests), requests[0][1] if requests else "")


def print_captures(directory: Path, clients: list[str], server: str, port: int) -> bool:
    """Print a line per capture in ``directory`` (DIR/HOST/NAME.pcap as fetched, or DIR/NAME.pcap as archived
    on a shared filesystem); False when none can be read from here."""
    if not directory.is_dir():
        print(f"captures: {directory} is not visible from this machine (the pcaps are on the hosts)")
        return False
    files = sorted([*directory.glob("*.pcap"), *directory.glob("*/*.pcap")])
    print(f"captures in {directory}:")
    width = max((len(f.name) for f in files), default=0)
    for path in files:
        try:
            s = summarize_capture(path, clients, server, port)
        except (OSError, PcapError) as exc:
            print(f"  {path.name:<{width}}  unreadable: {exc}")
            continue
        line = f"  {path.name:<{width}}  {s.packets:5d} packets, {s.http:5d} HTTP client<->server, {s.requests} GETs"
        if s.first_request:
            line += f" (first: {s.first_request})"
        print(line)
    return bool(files)


def die(message: str, code: int) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(code)
