#!/usr/bin/env python3
"""The seed's first script: tcpdump on several hosts for a while, then archive the captures.

    python examples/tcpdump_capture.py -i lab.ini 'vrouter:ct1' --destination traf21 --seconds 60 \\
        --archive /zfs/edgelab/$USER/tcpdumps --tag GTL
    sudo python examples/tcpdump_capture.py --testbed 3 --seconds 5

With ``--testbed N`` every host captures its traffic with this machine (the destination defaults to the
controller's address on the testbed bridge), which is the agents' own SSH sessions: something to see without
generating traffic.

Exit status as in the seed: 1 Configure (or starting the agent), 2 StartCollection, 3 StopCollection,
4 ArchiveDump failed; 2 also for a bad command line or inventory, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from demo_support import add_fleet_arguments, fleet_from_args, report
from pcap_reader import read_pcap

from agents.tcpdump_agent import TcpDumpAgent
from sshfleet import SshFleetError


def run(args: argparse.Namespace, hosts: list, destination: str, ssh_options: object) -> int:
    with TcpDumpAgent(hosts, ssh_options=ssh_options) as tcpdump:
        if not tcpdump.started.success():
            report("TcpDumpAgent could not start on every host:", tcpdump.started)
            return 1
        responses = tcpdump.Configure(dumpfile=args.dumpfile, agentlog=args.agentlog)
        if not report("Configure", responses):
            print(f"Error configuring tcpdump: {responses.status()}", file=sys.stderr)
            return 1
        responses = tcpdump.StartCollection(destination=destination)
        if not report(f"StartCollection(destination={destination!r})", responses):
            print(f"Error starting tcpdump: {responses.status()}", file=sys.stderr)
            return 2
        print(f"... capturing for {args.seconds:g}s")
        time.sleep(args.seconds)
        responses = tcpdump.StopCollection()
        if not report("StopCollection", responses):
            print(f"Error stopping tcpdump: {responses.status()}", file=sys.stderr)
            return 3
        responses = tcpdump.ArchiveDump(path=args.archive, tag=args.tag)
        if not report(f"ArchiveDump(path={args.archive!r}, tag={args.tag!r})", responses):
            print(f"Error archiving packet captures: {responses.status()}", file=sys.stderr)
            return 4
    archive = Path(args.archive)
    if archive.is_dir():
        for path in sorted(archive.glob(f"{args.tag}-*.pcap")):
            print(f"  {path}: {sum(1 for _ in read_pcap(path))} packets")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fleet_arguments(parser)
    parser.add_argument("hosts", nargs="*", help="hosts or inventory patterns (default: every host)")
    parser.add_argument("--destination", help="host whose traffic to capture (required with -i)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to capture (default: 60)")
    parser.add_argument("--dumpfile", default="/tmp/tcpdump.cap", help="capture file on each host")
    parser.add_argument("--agentlog", default="/tmp/tcpdump_agent.log", help="the agent's log on each host")
    parser.add_argument("--archive", default="/var/tmp/sshfleet-tcpdumps", help="directory for the archived pcaps")
    parser.add_argument("--tag", default="GTL", help="prefix of the archived pcap names (default: GTL)")
    args = parser.parse_args(argv)
    if args.inventory is not None and not args.destination:
        parser.error("--destination is required with -i")
    try:
        with fleet_from_args(args) as fleet:
            if fleet.testbed is not None:
                hosts = [h.spec for h in fleet.hosts if not args.hosts or h.name in args.hosts]
                destination = args.destination or str(fleet.controller_address)
            else:
                hosts = [h.spec for p in (args.hosts or ["all"]) for h in fleet.select(p, args.inventory)]
                destination = args.destination
            if not hosts:
                parser.error("no host selected")
            return run(args, hosts, destination, fleet.ssh_options)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SshFleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
