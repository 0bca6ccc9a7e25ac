"""What one warm call costs in events: tunnel reads/writes, SSH packets, loop iterations, per host-call.

    python -m bench.profile.wire [--hosts 1] [--rounds 500] [--option grpc.http2.bdp_probe=0 ...]

Wraps (in this process only) the tunnel pump's callbacks in sshfleet/_hub.py, paramiko's packet writer and
reader, and the hub loop's ``_run_once``, counts them over the rounds, and also times the rounds, so the
effect of a gRPC channel option on the traffic can be seen before changing sshfleet. ``--option`` adds
client channel options by patching ``sshfleet._agent._CHANNEL_OPTIONS`` in this process.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import statistics
import sys
import time
from typing import Any, Callable, Optional

counts: collections.Counter[str] = collections.Counter()


def counting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def instrument() -> None:
    import asyncio

    import paramiko.packet

    from sshfleet import _hub

    for name in ("_from_sock", "_from_chan", "_flush_to_chan", "_flush_to_sock"):
        setattr(_hub._Splice, name, counting(f"splice.{name}", getattr(_hub._Splice, name)))
    paramiko.packet.Packetizer.send_message = counting("ssh packets sent", paramiko.packet.Packetizer.send_message)
    paramiko.packet.Packetizer.read_message = counting("ssh packets read", paramiko.packet.Packetizer.read_message)
    base = asyncio.BaseEventLoop
    base._run_once = counting("hub loop iterations", base._run_once)  # type: ignore[attr-defined]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.wire", description=__doc__)
    p.add_argument("--hosts", type=int, default=1)
    p.add_argument("--rounds", type=int, default=500)
    p.add_argument("--user", default="fleet")
    p.add_argument("--option", action="append", default=[], help="extra client channel option NAME=INT")
    args = p.parse_args(argv)

    from agents.sysinfo import SysinfoAgent
    from sshfleet import _agent
    from sshfleet.testbed import Testbed

    for opt in args.option:
        key, _, value = opt.partition("=")
        _agent._CHANNEL_OPTIONS.append((key, int(value)))
    instrument()
    bed = Testbed("wire", args.hosts)
    with contextlib.suppress(Exception):
        bed.down()
    bed.up(timeout=60 + args.hosts)
    agent = None
    try:
        agent = SysinfoAgent([h.name for h in bed.hosts], ssh_options=bed.ssh_options(args.user))
        assert agent.started.success(), agent.started.status()
        for _ in range(50):
            agent.Uname()
        time.sleep(0.2)
        counts.clear()
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            agent.Uname()
            times.append(time.perf_counter() - t)
        snapshot = dict(counts)
        calls = args.rounds * args.hosts
        print(f"{args.hosts} hosts, {args.rounds} rounds, options {args.option or 'default'}")
        print(f"round median {statistics.median(times) * 1e3:.2f} ms")
        for name, value in sorted(snapshot.items()):
            per = value / (calls if "loop" not in name else args.rounds)
            unit = "per round" if "loop" in name else "per call"
            print(f"  {per:8.2f} {unit:<9}  {name}")
    finally:
        if agent is not None:
            agent.close()
        bed.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
