"""Where a warm fan-out call's time goes: CPU per call by thread on the controller and on the hosts, latency
baselines that isolate each layer, and optional py-spy profiles of the controller and of one servicer.

    python -m bench.profile.fanout --hosts 32 --rounds 1000 [--pyspy DIR] [--baselines]

Per-thread CPU comes from /proc/PID/task/TID/stat before and after the rounds (no instrumentation, so it
costs nothing); Python thread names are matched by native id. On the host side it counts every servicer
and the sshd session processes above it (which do that connection's encryption). The testbed ("prof") is
brought up and torn down here; hosts share this machine's pid namespace, so their pids are readable here.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from bench import _proc

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int, names: Optional[dict[int, str]] = None) -> dict[str, float]:
    """{thread group name: cpu seconds} for one process, threads grouped by name with digits stripped."""
    out: dict[str, float] = collections.defaultdict(float)
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    raw = f.read()
            except OSError:
                continue
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            name = (names or {}).get(int(tid)) or comm
            name = re.sub(r"\d+", "N", name)
            out[name] += (int(fields[11]) + int(fields[12])) / TICK
    return dict(out)


def python_thread_names() -> dict[int, str]:
    import paramiko

    names = {}
    for t in threading.enumerate():
        if t.native_id is not None:
            label = "paramiko-transport" if isinstance(t, paramiko.Transport) else t.name
            names[t.native_id] = f"py:{label}"
    return names


def ancestors(pid: int) -> list[int]:
    """pid's parents up to (not including) the sshd listener; the sshd session processes are among them."""
    chain = []
    while pid > 1:
        fields = _proc._stat_fields(pid)
        if fields is None:
            break
        ppid = int(fields[1])
        try:
            comm = Path(f"/proc/{ppid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except OSError:
            break
        if not comm.startswith("sshd") or b"-f" in cmdline:  # the listener runs as `sshd -f config`
            break
        chain.append(ppid)
        pid = ppid
    return chain


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def host_cpu(pids: dict[int, str]) -> dict[str, float]:
    total: dict[str, float] = collections.defaultdict(float)
    for pid, role in pids.items():
        for name, cpu in thread_cpu(pid).items():
            total[f"{role}/{name}"] += cpu
    return dict(total)


def pyspy(pid: int, out: Path, seconds: float, fmt: str, native: bool) -> subprocess.Popen[bytes]:
    """py-spy without --native runs --nonblocking (it does not pause the process); --native must pause it
    to unwind C stacks, which slows the calls being measured several times over."""
    exe = Path(sys.executable).with_name("py-spy")
    argv = [str(exe), "record", "--pid", str(pid), "--rate", "250", "--duration", str(int(seconds) + 1)]
    argv += ["--native"] if native else ["--nonblocking"]
    argv += ["--format", fmt, "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def table(title: str, cpu: dict[str, float], calls: int) -> None:
    total = sum(cpu.values())
    print(f"\n{title}: {total / calls * 1e6:.0f} µs CPU per host-call")
    for name, sec in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if sec / calls * 1e6 >= 1:
            print(f"  {sec / calls * 1e6:8.1f} µs  {100 * sec / total:5.1f}%  {name}")


# --------------------------------------------------------------------------------------------- baselines

_GRPC_CLIENT = r"""
import sys, time, statistics, grpc
sys.path.insert(0, sys.argv[4])
from agents import sysinfo_pb2 as pb, sysinfo_pb2_grpc as pbg
port, token, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ch = grpc.insecure_channel(f"127.0.0.1:{port}")
stub = pbg.SysinfoAgentStub(ch)
md = (("x-sshfleet-token", token),)
for _ in range(50): stub.Uname(pb.UnameArgs(), metadata=md)
ts = []
for _ in range(n):
    t = time.perf_counter(); stub.Uname(pb.UnameArgs(), metadata=md); ts.append(time.perf_counter() - t)
print(statistics.median(ts) * 1e6)
"""


def baselines(bed: Any, agent: Any, host: str, n: int = 500) -> dict[str, float]:
    """Median µs of one round trip through each layer alone, on one host."""
    import grpc

    from agents import sysinfo_pb2 as pb
    from agents import sysinfo_pb2_grpc as pbg
    from sshfleet import _ssh
    from sshfleet._options import HostSpec

    out: dict[str, float] = {}
    state = agent._hosts[host]
    token = dict(state.metadata)["x-sshfleet-token"]
    # 1. gRPC alone, inside the host: sync client -> servicer on 127.0.0.1 (no SSH at all).
    netns = bed.host(host).netns
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _GRPC_CLIENT, str(state.process.port), token, str(n),
         str(Path(__file__).resolve().parents[2])],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out["grpc_sync_on_host_us"] = float(proc.stdout.strip() or "nan")
    # 2. The SSH transport alone: one byte through `cat` on an exec channel (paramiko + sshd, both ways).
    conn = _ssh.connect(HostSpec(host), agent.options)
    chan = conn.exec("cat", timeout=10)
    chan.settimeout(10)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        chan.sendall(b"x")
        chan.recv(1)
        ts.append(time.perf_counter() - t)
    out["ssh_echo_paramiko_us"] = statistics.median(ts) * 1e6
    chan.close()
    conn.close()
    # 3. The tunnel with a sync gRPC client (no grpc.aio, no hub round trip from the caller's thread).
    channel = grpc.insecure_channel(state.forward.target, options=[("grpc.default_authority", "localhost")])
    stub = pbg.SysinfoAgentStub(channel)
    md = tuple(state.metadata)
    for _ in range(50):
        stub.Uname(pb.UnameArgs(), metadata=md)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        stub.Uname(pb.UnameArgs(), metadata=md)
        ts.append(time.perf_counter() - t)
    out["grpc_sync_via_tunnel_us"] = statistics.median(ts) * 1e6
    channel.close()
    # 4. The full path, one host: agent.Uname() as users call it.
    ts = []
    one = agent._hosts
    agent._hosts = {host: state}
    try:
        for _ in range(n):
            t = time.perf_counter()
            agent.Uname()
            ts.append(time.perf_counter() - t)
    finally:
        agent._hosts = one
    out["agent_uname_one_host_us"] = statistics.median(ts) * 1e6
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.fanout", description=__doc__)
    p.add_argument("--hosts", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--user", default="fleet")
    p.add_argument("--pyspy", default=None, help="directory for py-spy profiles of the controller and a servicer")
    p.add_argument("--pyspy-format", default="raw", choices=("raw", "flamegraph", "speedscope"))
    p.add_argument("--pyspy-native", action="store_true", help="include C frames (pauses the process: slow)")
    p.add_argument("--baselines", action="store_true", help="also time each layer alone on the first host")
    p.add_argument("--yappi", default=None, help="write a yappi (all threads, CPU clock) function table here")
    args = p.parse_args(argv)

    from agents.sysinfo import SysinfoAgent
    from sshfleet.testbed import Testbed

    bed = Testbed("prof", args.hosts)
    with contextlib.suppress(Exception):
        bed.down()
    bed.up(timeout=60 + args.hosts)
    agent = None
    try:
        names = [h.name for h in bed.hosts]
        agent = SysinfoAgent(names, ssh_options=bed.ssh_options(args.user))
        assert agent.started.success(), agent.started.status()
        for _ in range(50):
            agent.Uname()
        servicers = {int(agent.started[h]["pid"]): h for h in names}
        host_pids: dict[int, str] = {}
        for pid in servicers:
            host_pids[pid] = "servicer"
            for anc in ancestors(pid):
                host_pids[anc] = "sshd-session"
        # Time one round to size the py-spy recording.
        t = time.perf_counter()
        for _ in range(20):
            agent.Uname()
        per_round = (time.perf_counter() - t) / 20
        spies = []
        if args.pyspy:
            out = Path(args.pyspy)
            out.mkdir(parents=True, exist_ok=True)
            ext = {"raw": "txt", "flamegraph": "svg", "speedscope": "json"}[args.pyspy_format]
            seconds = per_round * args.rounds
            first = next(iter(servicers))
            spies.append(
                pyspy(
                    os.getpid(), out / f"controller-{args.hosts}.{ext}", seconds, args.pyspy_format, args.pyspy_native
                )
            )
            spies.append(
                pyspy(first, out / f"servicer-{args.hosts}.{ext}", seconds, args.pyspy_format, args.pyspy_native)
            )
            time.sleep(1.0)  # py-spy attaches
        if args.yappi:
            import yappi

            yappi.set_clock_type("cpu")
            yappi.start(builtins=False, profile_threads=True)
        names_by_tid = python_thread_names()
        c0, h0 = thread_cpu(os.getpid(), names_by_tid), host_cpu(host_pids)
        p0 = time.process_time()
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            reply = agent.Uname()
            times.append(time.perf_counter() - t)
            if not reply.success():
                raise RuntimeError(reply.status())
        p1 = time.process_time()
        names_by_tid.update(python_thread_names())
        c1, h1 = thread_cpu(os.getpid(), names_by_tid), host_cpu(host_pids)
        if args.yappi:
            yappi.stop()
            with open(args.yappi, "w") as f:
                stats = yappi.get_func_stats()
                stats.sort("tsub")
                stats.print_all(out=f, columns={0: ("name", 80), 1: ("ncall", 10), 2: ("tsub", 10), 3: ("ttot", 10)})
        for spy in spies:
            try:
                spy.wait(per_round * args.rounds + 60)
            except subprocess.TimeoutExpired:
                spy.kill()
        calls = args.rounds * args.hosts
        ordered = sorted(times)
        print(f"{args.hosts} hosts, {args.rounds} rounds ({calls} calls), user {args.user}")
        print(
            f"round: median {statistics.median(times) * 1e3:.2f} ms, p99 "
            f"{ordered[int(0.99 * (len(ordered) - 1))] * 1e3:.2f} ms; process CPU {(p1 - p0) / calls * 1e6:.0f} µs/call"
        )
        table("controller (this process), by thread", diff(c1, c0), calls)
        table("hosts (servicers + their sshd session processes), by thread", diff(h1, h0), calls)
        if args.baselines:
            print("\nlatency of one round trip through each layer alone (first host), median µs:")
            for name, value in baselines(bed, agent, names[0]).items():
                print(f"  {value:8.0f}  {name}")
    finally:
        if agent is not None:
            agent.close()
        bed.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
