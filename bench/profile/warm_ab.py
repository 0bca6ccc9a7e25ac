"""Warm fan-out, this tree against an earlier commit and Mitogen, in one alternating run.

    python -m bench.profile.warm_ab --sizes 1,32 --rounds 400 [--tree base=COMMIT|DIR ...] [--tools ...]
        [--hosts-cpu]

Why: on a shared 2-core machine only ratios measured in the same run mean anything, and a change to the hot
path must be compared with the code before it, not with last week's numbers. ``LABEL:TOOL`` runs a bench
tool from the tree of ``--tree LABEL=...`` (a commit, checked out in a ``git worktree``, or a directory: its
own sshfleet, runtime and payload), a plain TOOL from this checkout; each in its own worker process (bench.worker),
blocks of rounds in ABC... then ...CBA order. Controller CPU is the worker's CPU plus its children's (ssh
clients of Mitogen and of the OpenSSH transport); with ``--hosts-cpu`` the CPU of the servicers and their
sshd session processes is read from /proc too (the hosts share this machine's pid namespace).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from bench import _fleet, _proc
from bench._workers import REPO, Worker, WorkerError
from bench.profile.fanout import ancestors, host_cpu

DEFAULT_TOOLS = "sshfleet,sshfleet-openssh,base:sshfleet,base:sshfleet-openssh,mitogen"


class TreeWorker(Worker):
    """A bench worker whose code comes from another checkout (``cwd`` comes first on its sys.path)."""

    def __init__(self, tool: str, env: dict[str, Any], log_dir: Path, tree: Path, label: str) -> None:
        super().__init__(tool, env, log_dir)
        self.tree = tree
        self.log_path = log_dir / f"worker-{label}.log"

    def _start(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.worker", self.tool],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.tree,
                start_new_session=True,
            )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(self.env).encode() + b"\n")
        proc.stdin.flush()
        self._buf = b""
        return proc


def _worktree(label: str, commit: str, tmp: Path) -> Path:
    if Path(commit).is_dir():
        return Path(commit)
    path = tmp / label
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit], check=True,
                   capture_output=True)  # fmt: skip
    return path


def measure(env: dict[str, Any], tools: list[str], workers: dict[str, Worker], k: int, rounds: int,
            hosts: bool, say: Any) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}
    live = []
    for tool in tools:
        w = workers[tool]
        try:
            w.request("open", n=k, warmup=20, timeout=180 + 2 * k)
        except WorkerError as exc:
            say(f"{tool}: could not open {k} hosts: {str(exc).splitlines()[0]}")
            continue
        pids: dict[int, str] = {}
        if hosts and "sshfleet" in tool:
            for s in w.request("started", timeout=30)["started"].values():
                pid = int(s["pid"])  # the bootstrap; the servicer is its child
                for p in [pid, *_proc.descendants(pid)]:
                    pids[p] = "servicer"
                for anc in ancestors(pid):
                    pids[anc] = "sshd"
        out[tool] = {"times": [], "cpu": 0.0, "self": 0.0, "host_cpu": 0.0, "pids": pids}
        live.append(tool)
    blocks = max(2, min(10, rounds // 20))
    per_block = math.ceil(rounds / blocks)
    for b in range(blocks):
        for tool in live if b % 2 == 0 else live[::-1]:
            entry = out[tool]
            h0 = sum(host_cpu(entry["pids"]).values())
            reply = workers[tool].request("rounds", n=per_block, timeout=120 + per_block * (0.5 + 0.05 * k))
            entry["host_cpu"] += sum(host_cpu(entry["pids"]).values()) - h0
            entry["times"] += reply["times"]
            entry["cpu"] += reply["cpu"] + reply["children_cpu"]
            entry["self"] += reply["cpu"]
    for tool in live:
        with contextlib.suppress(WorkerError):
            workers[tool].request("close", timeout=120 + k)
        entry = out[tool]
        calls = len(entry["times"]) * k
        entry["round_ms"] = statistics.median(entry["times"]) * 1e3
        entry["cpu_us"] = entry["cpu"] / calls * 1e6
        entry["self_us"] = entry["self"] / calls * 1e6
        entry["host_us"] = entry["host_cpu"] / calls * 1e6 if entry["pids"] else None
        del entry["times"], entry["pids"]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.warm_ab", description=__doc__)
    p.add_argument("--sizes", default="1,32")
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--tree", action="append", default=[], help="LABEL=COMMIT or LABEL=DIR (default base=HEAD)")
    p.add_argument("--tools", default=DEFAULT_TOOLS, help="bench tools; LABEL:TOOL runs TOOL from that --tree")
    p.add_argument("--user", default="fleet")
    p.add_argument("--hosts-cpu", action="store_true", help="also the servicers' and their sshd's CPU per call")
    p.add_argument("--name", default="ab", help="testbed name")
    args = p.parse_args(argv)

    from sshfleet.testbed import Testbed

    sizes = [int(s) for s in args.sizes.split(",")]
    tools = args.tools.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="warm-ab-"))
    beds = [Testbed(f"{args.name}{i or ''}", min(99, max(sizes) - 99 * i)) for i in range(math.ceil(max(sizes) / 99))]
    for bed in beds:
        with contextlib.suppress(Exception):
            bed.down()
    workers: dict[str, Worker] = {}
    trees = dict(t.split("=", 1) for t in args.tree or ["base=HEAD"])
    made: list[Path] = []
    try:
        for bed in beds:
            bed.up(timeout=60 + max(sizes))
        env = _fleet.env_of(beds[0], tmp, args.user) if len(beds) == 1 else _fleet.joined_env(beds, tmp, args.user)
        paths = {}
        for label in {t.split(":", 1)[0] for t in tools if ":" in t}:
            paths[label] = _worktree(label, trees[label], tmp)
            if not Path(trees[label]).is_dir():
                made.append(paths[label])
        for tool in tools:
            label, _, name = tool.rpartition(":")
            workers[tool] = TreeWorker(name, env, tmp, paths[label] if label else REPO, tool.replace(":", "-"))
        started = time.strftime("%H:%M:%S")
        print(f"warm_ab {started}, trees {trees}, rounds {args.rounds}", flush=True)
        for k in sizes:
            res = measure(env, tools, workers, k, args.rounds, args.hosts_cpu, lambda m: print(m, flush=True))
            mito = res.get("mitogen")
            print(f"\n{k} hosts:{'':14}round ms  ctl µs/call (process)  host µs/call  (÷ mitogen: round, ctl)")
            for tool, e in res.items():
                ratio = f"{e['round_ms'] / mito['round_ms']:.2f}x  {e['cpu_us'] / mito['cpu_us']:.2f}x" if mito else ""
                host = f"{e['host_us']:8.0f}" if e["host_us"] is not None else "       -"
                cpu = f"{e['cpu_us']:6.0f} ({e['self_us']:4.0f})"
                print(f"  {tool:<24}{e['round_ms']:8.2f}  {cpu:>20}  {host}      {ratio}", flush=True)
    finally:
        for w in workers.values():
            w.kill()
        for bed in beds:
            with contextlib.suppress(Exception):
                bed.down()
        for path in made:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False,
                           capture_output=True)  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)  # the workers' logs and the joined ssh_config
    return 0


if __name__ == "__main__":
    sys.exit(main())
