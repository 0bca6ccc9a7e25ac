"""Mitogen's warm fan-out measured like bench.profile.fanout measures sshfleet: CPU per call by thread on the
controller (plus its ssh children) and on the hosts (remote contexts + their sshd session processes).

    python -m bench.profile.mitogen_side --hosts 32 --rounds 1000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from bench import _proc, remote_fn
from bench.profile.fanout import ancestors, diff, host_cpu, table, thread_cpu


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.mitogen_side", description=__doc__)
    p.add_argument("--hosts", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--user", default="fleet")
    args = p.parse_args(argv)

    import mitogen.master

    from sshfleet.testbed import Testbed

    bed = Testbed("mside", args.hosts)
    with contextlib.suppress(Exception):
        bed.down()
    bed.up(timeout=60 + args.hosts)
    broker = mitogen.master.Broker()
    try:
        router = mitogen.master.Router(broker)
        with ThreadPoolExecutor(max_workers=min(64, args.hosts)) as pool:
            contexts = list(
                pool.map(
                    lambda h: router.ssh(
                        hostname=h.name, username=args.user, python_path=["python3"],
                        ssh_args=["-F", str(bed.ssh_config)], connect_timeout=120,
                    ),
                    bed.hosts,
                )
            )  # fmt: skip
        remote_pids = [ctx.call(os.getpid) for ctx in contexts]
        host_pids: dict[int, str] = {}
        for pid in remote_pids:
            host_pids[pid] = "context"
            for anc in ancestors(pid):
                host_pids[anc] = "sshd-session"

        def one_round() -> None:
            receivers = [ctx.call_async(remote_fn.answer) for ctx in contexts]
            for r in receivers:
                r.get().unpickle()

        for _ in range(50):
            one_round()
        kids0 = _proc.children_cpu()
        c0, h0 = thread_cpu(os.getpid()), host_cpu(host_pids)
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            one_round()
            times.append(time.perf_counter() - t)
        c1, h1 = thread_cpu(os.getpid()), host_cpu(host_pids)
        children = _proc.children_cpu_delta(kids0, _proc.children_cpu())
        calls = args.rounds * args.hosts
        print(f"mitogen, {args.hosts} hosts, {args.rounds} rounds: median {statistics.median(times) * 1e3:.2f} ms")
        controller = diff(c1, c0)
        controller["ssh client processes"] = children
        table("controller (this process + its ssh children), by thread", controller, calls)
        table("hosts (remote contexts + their sshd session processes), by thread", diff(h1, h0), calls)
    finally:
        broker.shutdown()
        broker.join()
        bed.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
