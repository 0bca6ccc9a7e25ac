#!/usr/bin/env python3
"""Hosts that call the controller: HTTP clients report their request counts every second while traffic runs,
and the controller prints each report as it comes (the two directions of the Vortex seed).

    sudo python examples/live_reports.py --testbed 3          # node01 serves, the others send traffic
    python examples/live_reports.py -i lab.ini --servers traf21 --clients 'traf1*'

The controller's handler is a plain class derived from the generated HttpClientAgentControllerServicer; the
hosts' servicers get a stub of it (HttpClientAgentControllerStub) and call it as any gRPC stub.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from typing import Any

from demo_support import Fleet, add_fleet_arguments, fleet_from_args, report, started

import sshfleet
from agents import http_client_agent_pb2 as client_pb
from agents import http_client_agent_pb2_grpc as client_grpc
from agents.http_client_agent import HttpClientAgent, HttpClientAgentException
from agents.http_server_agent import HttpServerAgent, HttpServerAgentException
from sshfleet import SshFleetError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
HTTP_PORT = 8080


class Reports(client_grpc.HttpClientAgentControllerServicer):
    """Prints every host's report as it arrives, and keeps the last one per host."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}
        self.count = 0
        self._lock = threading.Lock()

    def Report(self, request: Any, context: Any) -> Any:
        host = sshfleet.calling_host(context)
        line = (
            f"  [{host}] {request.seconds:5.1f}s  {request.requests} requests, {request.ok} ok, "
            f"{request.failed} failed, {request.bytes} bytes  ({request.rate:g}/s)"
        )
        with self._lock:  # handlers of several hosts run at once: one whole line each
            self.last[host] = request
            self.count += 1
            print(line, flush=True)
        return client_pb.Ack()


def run(args: argparse.Namespace, fleet: Fleet) -> int:
    if fleet.testbed is not None:
        servers, clients = fleet.hosts[:1], fleet.hosts[1:]
    else:
        servers, clients = fleet.select(args.servers, args.inventory), fleet.select(args.clients, args.inventory)
    reports = Reports()
    with contextlib.ExitStack() as stack:
        begin = time.monotonic()
        options = {"ssh_options": fleet.ssh_options}
        apache = stack.enter_context(HttpServerAgent([h.spec for h in servers], **options))
        curl = stack.enter_context(HttpClientAgent([h.spec for h in clients], controller=reports, **options))
        if not started({"apache": apache, "curl": curl}, time.monotonic() - begin):
            return EXIT_FAILED
        try:
            apache.StartServer(port=HTTP_PORT).raise_for_status()
            curl.Configure(rate_limit=args.rate).raise_for_status()
            curl.StartTraffic(servers=[f"{h.address}:{HTTP_PORT}" for h in servers]).raise_for_status()
            print(f"... traffic for {args.seconds:g}s; the clients report every second:", flush=True)
            time.sleep(args.seconds)
            report("curl.StopTraffic()", curl.StopTraffic().raise_for_status())
            apache.StopServer().raise_for_status()
        except (HttpServerAgentException, HttpClientAgentException) as exc:
            print(f"stopped: {exc.responses.method}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    silent = [h.name for h in clients if h.name not in reports.last]
    print(f"{reports.count} reports from {len(reports.last)} of {len(clients)} clients")
    if silent:
        print(f"no report from {', '.join(silent)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fleet_arguments(parser)
    parser.add_argument("--seconds", type=float, default=4.0, help="how long the traffic runs (default: 4)")
    parser.add_argument("--rate", type=int, default=10, help="requests per second per client (default: 10)")
    parser.add_argument("--servers", default="http_servers", help="inventory pattern of the HTTP servers")
    parser.add_argument("--clients", default="http_clients", help="inventory pattern of the HTTP clients")
    args = parser.parse_args(argv)
    try:
        with fleet_from_args(args, min_hosts=2) as fleet:
            return run(args, fleet)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SshFleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
