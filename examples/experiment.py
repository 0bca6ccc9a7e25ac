#!/usr/bin/env python3
"""The seed's experiment: an HTTP server on one host, traffic to it from others, tcpdump on a third host and
on the server; then stop everything, archive the captures, bring them home and count the HTTP packets in them.

The seed archived into a shared filesystem (``ArchiveDump(path='/zfs/edgelab/...')``); most testbeds have none,
so each host archives into its servicer's session directory and ``tcpdump.fetch()`` copies every host's capture
to ``--archive DIR/HOST/`` on this machine before the agents close.

    sudo python examples/experiment.py --testbed 4            # local hosts, made and removed by the script
    python examples/experiment.py -i lab.ini                  # groups http_servers, http_clients, tcpdump
    python examples/experiment.py -i lab.ini --servers traf21 --clients 'traf1*' --capture 'vrouter:ct1'

On a testbed of N hosts: node01 serves, node02..node(N-1) are clients, and tcpdump runs on node N and on
node01. A testbed is a bridge, and a bridge delivers unicast only to its destination: the third host sees
little of the client<->server traffic (on a real network, pick a host on the path, like a router).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from demo_support import Fleet, Host, add_fleet_arguments, fleet_from_args, print_captures, report, started

from agents.http_client_agent import HttpClientAgent, HttpClientAgentException
from agents.http_server_agent import HttpServerAgent, HttpServerAgentException
from agents.tcpdump_agent import TcpDumpAgent, TcpDumpAgentException
from sshfleet import SshFleetError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
HTTP_PORT = 8080


def step(label: str, agent: Any, method: str, **fields: Any) -> None:
    """Call ``agent.method(**fields)`` on its hosts and print each host's result; unless every host succeeded,
    raise the agent's own exception (``TcpDumpAgentException``, ...), which stops the experiment."""
    shown = ", ".join(f"{k}={v!r}" for k, v in fields.items())
    responses = getattr(agent, method)(**fields)
    report(f"{label}.{method}({shown})", responses)
    responses.raise_for_status()


def roles(args: argparse.Namespace, fleet: Fleet) -> tuple[list[Host], list[Host], list[Host]]:
    """(servers, clients, capture hosts) from the testbed layout or the inventory patterns."""
    if fleet.testbed is not None:
        hosts = fleet.hosts
        server, rest = hosts[0], hosts[1:]
        clients = rest[:-1] if len(rest) > 1 else rest
        observers = rest[-1:] if len(rest) > 1 else []
        return [server], clients, [*observers, server]
    servers = fleet.select(args.servers, args.inventory)
    clients = fleet.select(args.clients, args.inventory)
    capture = fleet.select(args.capture, args.inventory)
    for what, hosts, pattern in (("servers", servers, args.servers), ("clients", clients, args.clients)):
        if not hosts:
            raise SystemExit(f"no {what}: pattern {pattern!r} matches no host of {args.inventory}")
    return servers, clients, capture


def run(args: argparse.Namespace, fleet: Fleet) -> int:
    servers, clients, capture = roles(args, fleet)
    print(
        f"server {', '.join(h.name for h in servers)}; clients {', '.join(h.name for h in clients)}; "
        f"tcpdump on {', '.join(h.name for h in capture) or 'no host'}"
    )
    server = servers[0]
    archive = Path(args.archive or f"sshfleet-captures-{time.strftime('%Y%m%d-%H%M%S')}")
    with contextlib.ExitStack() as stack:
        begin = time.monotonic()
        options = {"ssh_options": fleet.ssh_options}
        apache = stack.enter_context(HttpServerAgent([h.spec for h in servers], **options))
        curl = stack.enter_context(HttpClientAgent([h.spec for h in clients], **options))
        agents: dict[str, Any] = {"apache": apache, "curl": curl}
        if capture:
            agents["tcpdump"] = tcpdump = stack.enter_context(TcpDumpAgent([h.spec for h in capture], **options))
        if not started(agents, time.monotonic() - begin):
            return EXIT_FAILED
        try:
            step("apache", apache, "StartServer", port=HTTP_PORT)
            if capture:
                step("tcpdump", tcpdump, "Configure", dumpfile=args.dumpfile, agentlog=args.agentlog)
                step("tcpdump", tcpdump, "StartCollection", destination=server.address)
            step("curl", curl, "Configure", sizes=args.sizes, rate_limit=args.rate)
            step("curl", curl, "StartTraffic", servers=[f"{h.address}:{HTTP_PORT}" for h in servers])
            print(f"... traffic for {args.seconds:g}s")
            time.sleep(args.seconds)
            if capture:
                step("tcpdump", tcpdump, "StopCollection")
                step("tcpdump", tcpdump, "ArchiveDump", path="captures", tag=args.tag)  # in the session directory
                fetched = tcpdump.fetch(f"captures/{args.tag}-*.pcap", archive)
                report(f"tcpdump.fetch -> {archive}/HOST/", fetched)
                fetched.raise_for_status()
            step("curl", curl, "StopTraffic")
            step("apache", apache, "StopServer")
        except (HttpServerAgentException, HttpClientAgentException, TcpDumpAgentException) as exc:
            print(f"experiment stopped: {exc.responses.method}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    # Agents closed: every servicer, and whatever it started (tcpdump, the server), is gone from the hosts.
    if capture:
        print_captures(archive, [h.address for h in clients], server.address, HTTP_PORT)
        off_path = [h.name for h in capture if fleet.testbed is not None and h not in (*servers, *clients)]
        if off_path:
            print(f"  ({', '.join(off_path)}: not on the path; a bridge delivers unicast only to its destination)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fleet_arguments(parser)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the traffic runs (default: 5)")
    parser.add_argument("--rate", type=int, default=20, help="requests per second per client (default: 20)")
    parser.add_argument(
        "--sizes", default="random.randint(1000, 20000)", help="bytes per request, an expression (default: %(default)s)"
    )
    parser.add_argument(
        "--archive",
        metavar="DIR",
        help="where the captures come home, as DIR/HOST/TAG-HOST.pcap (default: ./sshfleet-captures-...)",
    )
    parser.add_argument("--tag", default="demo", help="prefix of the archived pcap names (default: demo)")
    parser.add_argument("--dumpfile", default="/tmp/tcpdump.cap", help="capture file on each host")
    parser.add_argument("--agentlog", default="/tmp/tcpdump_agent.log", help="tcpdump agent's log on each host")
    parser.add_argument("--servers", default="http_servers", help="inventory pattern of the HTTP servers")
    parser.add_argument("--clients", default="http_clients", help="inventory pattern of the HTTP clients")
    parser.add_argument("--capture", default="tcpdump", help="inventory pattern of the tcpdump hosts")
    args = parser.parse_args(argv)
    try:
        with fleet_from_args(args, min_hosts=2) as fleet:
            return run(args, fleet)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SshFleetError as exc:  # a bad inventory or option; host failures are in the printed results
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
