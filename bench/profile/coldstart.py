"""Where an agent start goes: SSH connects alone, the whole start, and the CPU the hosts spend on it.

    python -m bench.profile.coldstart --hosts 32

Prints: the seconds and controller CPU of connecting every host with sshfleet's SSH seam alone; the seconds of
``SysinfoAgent(hosts)`` with a warm payload cache, the controller's CPU, and the CPU each servicer process had
used by the time it answered READY (Python start-up, imports of grpc/protobuf/the servicer, server start);
and what ``python3 -X importtime`` says the servicer's imports cost on one host.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from bench import _proc


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.coldstart", description=__doc__)
    p.add_argument("--hosts", type=int, default=32)
    p.add_argument("--user", default="fleet")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)

    from agents.sysinfo import SysinfoAgent
    from sshfleet import _ssh
    from sshfleet._options import HostSpec
    from sshfleet.testbed import Testbed

    bed = Testbed("cold", args.hosts)
    with contextlib.suppress(Exception):
        bed.down()
    bed.up(timeout=60 + args.hosts)
    try:
        names = [h.name for h in bed.hosts]
        options = bed.ssh_options(args.user)
        SysinfoAgent(names, ssh_options=options).close()  # fills the payload cache everywhere
        for rep in range(args.reps):
            c0, t0 = time.process_time(), time.perf_counter()
            with ThreadPoolExecutor(max_workers=min(64, len(names))) as pool:
                conns = list(pool.map(lambda n: _ssh.connect(HostSpec(n), options), names))
            c1, t1 = time.process_time(), time.perf_counter()
            for c in conns:
                c.close()
            print(f"[{rep}] connect all: {t1 - t0:.2f} s, controller CPU {c1 - c0:.2f} s")

            c0, t0 = time.process_time(), time.perf_counter()
            agent = SysinfoAgent(names, ssh_options=options)
            c1, t1 = time.process_time(), time.perf_counter()
            pids = [int(agent.started[h]["pid"]) for h in names]
            servicer_cpu = [_proc.cpu_seconds(pid) for pid in pids]
            boot = [agent.started[h]["seconds"] for h in names]
            t2 = time.perf_counter()
            agent.Uname()
            t3 = time.perf_counter()
            agent.close()
            t4 = time.perf_counter()
            print(
                f"[{rep}] agent start: {t1 - t0:.2f} s (controller CPU {c1 - c0:.2f} s), first call "
                f"{(t3 - t2) * 1e3:.0f} ms, close {t4 - t3:.2f} s; per host: bootstrap median "
                f"{statistics.median(boot):.2f} s, servicer CPU at READY median "
                f"{statistics.median(servicer_cpu):.3f} s "
                f"(sum {sum(servicer_cpu):.1f} s over {len(pids)} hosts)"
            )
        host = bed.hosts[0]
        cache = host.cache_dirs[args.user] / "sshfleet"
        dirs = [str(d) for d in cache.iterdir() if d.is_dir() and d.name != "sessions"]
        code = f"import sys; sys.path[:0] = {dirs!r}; import grpc, sysinfo_servicer"
        proc = subprocess.run(
            ["ip", "netns", "exec", host.netns, "runuser", "-u", args.user, "--", "python3", "-X", "importtime",
             "-c", code],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        rows = []
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                parts = [x.strip() for x in line[len("import time:") :].split("|")]
                with contextlib.suppress(ValueError):
                    rows.append((int(parts[1]), parts[2]))
        total = sum(us for us, name in rows if not name.startswith(" "))
        print(f"\nimports on the host (python3 -X importtime, cumulative µs, top-level total {total / 1e3:.0f} ms):")
        for us, name in sorted(rows, reverse=True)[:15]:
            print(f"  {us / 1e3:8.1f} ms  {name.strip()}")
        t0 = time.perf_counter()
        subprocess.run(
            ["ip", "netns", "exec", host.netns, "runuser", "-u", args.user, "--", "python3", "-c", "pass"],
            check=True, timeout=60,
        )  # fmt: skip
        print(f"bare `python3 -c pass` on the host: {(time.perf_counter() - t0) * 1e3:.0f} ms")
    finally:
        bed.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
