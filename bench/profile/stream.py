"""Where streaming CPU goes: ``Count(n, 64 KiB)`` from one host, CPU per MB by thread on both sides.

python -m bench.profile.stream [--mib 256] [--chunk 65536] [--pyspy DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Optional

from bench.profile.fanout import ancestors, diff, host_cpu, pyspy, python_thread_names, thread_cpu


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.stream", description=__doc__)
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--chunk", type=int, default=64 * 1024)
    p.add_argument("--user", default="fleet")
    p.add_argument("--pyspy", default=None)
    args = p.parse_args(argv)

    from agents.sysinfo import SysinfoAgent
    from sshfleet.testbed import Testbed

    bed = Testbed("stream", 1)
    with contextlib.suppress(Exception):
        bed.down()
    bed.up()
    agent = None
    try:
        host = bed.hosts[0].name
        agent = SysinfoAgent([host], ssh_options=bed.ssh_options(args.user))
        pid = int(agent.started[host]["pid"])
        host_pids = {pid: "servicer", **{a: "sshd-session" for a in ancestors(pid)}}
        n = (args.mib << 20) // args.chunk

        def run(count: int) -> int:
            total = 0
            for _, chunk in agent.Count(n=count, size=args.chunk):
                total += len(chunk.data)
            return total

        run(n // 4)  # warm-up
        spies = []
        if args.pyspy:
            out = Path(args.pyspy)
            out.mkdir(parents=True, exist_ok=True)
            spies = [
                pyspy(os.getpid(), out / "stream-controller.txt", 10, "raw", False),
                pyspy(pid, out / "stream-servicer.txt", 10, "raw", False),
            ]
            time.sleep(1)
        names = python_thread_names()
        c0, h0, t0 = thread_cpu(os.getpid(), names), host_cpu(host_pids), time.perf_counter()
        got = run(n)
        c1, h1, t1 = thread_cpu(os.getpid(), python_thread_names()), host_cpu(host_pids), time.perf_counter()
        for spy in spies:
            spy.wait(60)
        mb = got / 1e6
        print(f"{got >> 20} MiB in {t1 - t0:.2f} s = {mb / (t1 - t0):.0f} MB/s, chunk {args.chunk} B")
        for title, cpu in (("controller", diff(c1, c0)), ("host (servicer + sshd)", diff(h1, h0))):
            total = sum(cpu.values())
            print(f"\n{title}: {total / mb * 1e3:.2f} ms CPU per MB")
            for name, sec in sorted(cpu.items(), key=lambda kv: -kv[1]):
                if sec / mb * 1e3 >= 0.05:
                    print(f"  {sec / mb * 1e3:7.2f} ms/MB  {100 * sec / total:5.1f}%  {name}")
    finally:
        if agent is not None:
            agent.close()
        bed.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
