"""What-if experiments on the warm fan-out path, run against live servicers without changing sshfleet:

- ``tunnel``: sshfleet as it is (grpc.aio -> Unix socket -> hub splice -> paramiko -> sshd -> servicer);
- ``tunnel-lean``: the same transport, but the fan-out gathers the gRPC calls directly (no wrapper task per
  host), to price the asyncio task overhead of Agent._fanout;
- ``openssh``: the same grpc.aio channels and servicers, but each host's port forwarded by an OpenSSH client
  (``ssh -N -L sock:127.0.0.1:PORT``), so encryption and pumping happen in C in a child process.

    python -m bench.profile.transport_alt --hosts 32 --rounds 300

Reports round median/p99 and controller CPU per host-call (this process + its ssh children), alternating the
variants in blocks so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

from bench import _proc


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.transport_alt", description=__doc__)
    p.add_argument("--hosts", type=int, default=32)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--user", default="fleet")
    args = p.parse_args(argv)

    import grpc

    from agents.sysinfo import SysinfoAgent
    from sshfleet import _agent
    from sshfleet.testbed import Testbed

    bed = Testbed("alt", args.hosts)
    with contextlib.suppress(Exception):
        bed.down()
    bed.up(timeout=60 + args.hosts)
    agent = None
    masters: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.mkdtemp(prefix="alt-")
    try:
        names = [h.name for h in bed.hosts]
        agent = SysinfoAgent(names, ssh_options=bed.ssh_options(args.user))
        assert agent.started.success(), agent.started.status()
        hub = agent._hub
        states = list(agent._hosts.values())
        method = agent._method("Uname")
        request = agent._request(method, {})

        # OpenSSH forwards to the very same servicers.
        socks = []
        for i, state in enumerate(states):
            sock = os.path.join(tmp, f"h{i}.sock")
            argv = ["ssh", "-F", str(bed.ssh_config), "-l", args.user, "-N", "-o", "ExitOnForwardFailure=yes"]
            argv += ["-L", f"{sock}:127.0.0.1:{state.process.port}", state.host]
            masters.append(
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            socks.append(sock)
        deadline = time.monotonic() + 60
        while not all(os.path.exists(s) for s in socks):
            if time.monotonic() > deadline:
                raise RuntimeError("ssh -L sockets did not appear")
            time.sleep(0.05)

        async def make_channels() -> list[Any]:
            chans = [grpc.aio.insecure_channel(f"unix:{s}", options=_agent._CHANNEL_OPTIONS) for s in socks]
            return [
                c.unary_unary(
                    "/sysinfo.SysinfoAgent/Uname",
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=agent._pb2_message(method.output_type).FromString,
                )
                for c in chans
            ]

        ssh_calls = hub.run(make_channels())
        tunnel_calls = [agent._multicallable(s, method) for s in states]

        def lean(calls: list[Any]) -> Callable[[], None]:
            async def fan_out() -> None:
                results = await asyncio.gather(
                    *(c(request, timeout=30, metadata=s.metadata) for c, s in zip(calls, states)),
                    return_exceptions=True,
                )
                bad = [r for r in results if isinstance(r, BaseException)]
                if bad:
                    raise RuntimeError(bad[0])

            return lambda: hub.run(fan_out())

        def as_is() -> None:
            reply = agent.Uname()
            if not reply.success():
                raise RuntimeError(reply.status())

        variants = {"tunnel": as_is, "tunnel-lean": lean(tunnel_calls), "openssh": lean(ssh_calls)}
        for fn in variants.values():
            for _ in range(20):
                fn()
        stats: dict[str, dict[str, Any]] = {k: {"times": [], "cpu": 0.0} for k in variants}
        blocks = 6
        per = max(1, args.rounds // blocks)
        for b in range(blocks):
            order = list(variants) if b % 2 == 0 else list(variants)[::-1]
            for name in order:
                fn = variants[name]
                with _proc.CpuMeter() as meter:
                    for _ in range(per):
                        t = time.perf_counter()
                        fn()
                        stats[name]["times"].append(time.perf_counter() - t)
                stats[name]["cpu"] += meter.cpu + meter.children
        print(f"{args.hosts} hosts, {per * blocks} rounds per variant, user {args.user}")
        for name, st in stats.items():
            times = sorted(st["times"])
            calls = len(times) * args.hosts
            print(
                f"  {name:<12} round median {statistics.median(times) * 1e3:7.2f} ms  "
                f"p99 {times[int(0.99 * (len(times) - 1))] * 1e3:7.2f} ms  "
                f"controller CPU {st['cpu'] / calls * 1e6:6.0f} µs/call"
            )
    finally:
        for m in masters:
            m.terminate()
        for m in masters:
            try:
                m.wait(5)
            except subprocess.TimeoutExpired:
                m.kill()
        if agent is not None:
            agent.close()
        bed.down()
        with contextlib.suppress(OSError):
            for f in os.listdir(tmp):
                os.unlink(os.path.join(tmp, f))
            os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
