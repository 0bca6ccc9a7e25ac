"""The measurements, each run tool after tool in alternating order (A B C, C B A, ...), medians reported.

Alternating spreads the machine's noise (other processes, CPU frequency, page cache) over every tool alike.
Every request to a worker has a deadline, and every failure is recorded in the results and the run goes on.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from bench import _fleet, _proc
from bench._workers import Worker, WorkerError
from sshfleet.testbed import Testbed

COLD_TOOLS = [
    "sshfleet", "sshfleet-empty-cache", "sshfleet-openssh", "fabric", "parallel-ssh", "asyncssh", "mitogen", "ansible",
]  # fmt: skip
WARM_TOOLS = ["sshfleet", "sshfleet-openssh", "mitogen", "fabric", "parallel-ssh", "asyncssh"]
# Peers whose warm round takes 5-50x sshfleet's get half the rounds: their median is far from any target.
SLOW_PEERS = {"fabric": 100, "parallel-ssh": 100, "asyncssh": 100}
STREAM_TOOLS = ["sshfleet", "sshfleet-openssh", "paramiko", "paramiko-seam", "openssh"]
ALL_TOOLS = sorted(set(COLD_TOOLS + WARM_TOOLS + STREAM_TOOLS) - {"sshfleet-empty-cache"})


@dataclass
class Plan:
    sizes: list[int]
    rounds: int
    cold_reps: int
    empty_cache_reps: int
    stream_bytes: int
    stream_reps: int
    scale_hosts: int
    scale_calls: int
    scale_tools: list[str]
    tools: set[str]
    phases: set[str]
    adhoc_sizes: list[int] = field(default_factory=lambda: [1, 16, 32])
    adhoc_reps: int = 10
    cpu_hosts: int = 128  # the controller-CPU comparison with Mitogen in the scale phase
    cpu_rounds: int = 200
    scale_open_timeout: float = 300.0  # a tool that cannot bring up the many hosts in this time is reported


@dataclass
class Run:
    """What the phases share: the plan, the main testbed, one worker per tool, the results being built."""

    plan: Plan
    bed: Testbed
    env: dict[str, Any]
    log_dir: Path
    say: Callable[[str], None]
    results: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    extra_beds: list[Testbed] = field(default_factory=list)

    def worker(self, tool: str) -> Worker:
        base = "sshfleet" if tool == "sshfleet-empty-cache" else tool
        if base not in self.workers:
            self.workers[base] = Worker(base, self.env, self.log_dir)
        return self.workers[base]

    def wanted(self, tools: list[str]) -> list[str]:
        return [
            t for t in tools if t in self.plan.tools or (t.startswith("sshfleet") and "sshfleet" in self.plan.tools)
        ]

    def stop_workers(self, quick: bool = False) -> None:
        for w in self.workers.values():
            w.kill() if quick else w.stop()
        self.workers.clear()


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "p99": ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)],
    }


def _alternate(tools: list[str], i: int) -> list[str]:
    return tools if i % 2 == 0 else tools[::-1]


# --------------------------------------------------------------------------------------------- cold start


def cold(run: Run) -> None:
    """connect + one trivial remote Python action + disconnect, per tool and fleet size."""
    sizes = run.plan.sizes
    tools = run.wanted(COLD_TOOLS)
    out: dict[str, dict[str, Any]] = {str(k): {t: {"runs": [], "errors": []} for t in tools} for k in sizes}
    run.results["cold"] = out
    warmups: dict[str, Any] = {}
    run.results["cold_warmup"] = warmups
    # One unmeasured run per tool at the largest size: pays each worker's imports and first-use costs, and
    # fills sshfleet's payload cache on every host (the "warm cache" case).
    for tool in tools:
        if tool == "sshfleet-empty-cache":
            continue
        run.say(f"cold: warm-up {tool} on {max(sizes)} hosts")
        try:
            warmups[tool] = run.worker(tool).request("cold", n=max(sizes), timeout=_cold_timeout(tool, max(sizes)))
        except WorkerError as exc:
            warmups[tool] = {"error": str(exc)}
    for rep in range(run.plan.cold_reps):
        for k in sizes:
            for tool in _alternate(tools, rep):
                if tool == "sshfleet-empty-cache":
                    if rep >= run.plan.empty_cache_reps:
                        continue
                    _fleet.empty_cache(run.bed.hosts[:k], run.env["user"])
                try:
                    reply = run.worker(tool).request("cold", n=k, timeout=_cold_timeout(tool, k))
                except WorkerError as exc:
                    out[str(k)][tool]["errors"].append(str(exc))
                    run.say(f"cold: {tool} on {k} hosts FAILED: {str(exc).splitlines()[0]}")
                    continue
                out[str(k)][tool]["runs"].append(reply)
                run.say(f"cold: {tool:<22} {k:>3} hosts  {reply['seconds']:7.3f} s")
    for per_size in out.values():
        for entry in per_size.values():
            entry["seconds"] = _summary([r["seconds"] for r in entry["runs"]])


def _cold_timeout(tool: str, n: int) -> float:
    return 120 + (10 if tool == "sshfleet-empty-cache" else 4) * n


# --------------------------------------------------------------------------------------------- warm fan-out


def warm(
    run: Run,
    k: int,
    tools: list[str],
    rounds: int,
    key: Optional[str] = None,
    open_timeout: Optional[float] = None,
    fewer: Optional[dict[str, int]] = None,
) -> dict[str, Any]:
    """Rounds of one trivial call on every host over open connections: median/p99 per round, CPU per call.

    The rounds go in (at most) 10 alternating blocks; after each block the worker's threads, open file
    descriptors and RSS are sampled (``samples``, the first one taken when the connections are up).
    ``fewer`` gives some tools fewer rounds (spread over the same blocks), where only a median is wanted.
    """
    tools = run.wanted(tools)
    out: dict[str, Any] = {t: {"errors": []} for t in tools}
    run.results.setdefault("warm", {})[key or str(k)] = out
    live = []
    for tool in tools:
        worker = run.worker(tool)
        entry = out[tool]
        try:
            entry["probe_before_open"] = worker.request("probe", timeout=30)
            timeout = open_timeout if open_timeout is not None else 120 + 2 * k
            entry["open_seconds"] = worker.request("open", n=k, warmup=5, timeout=timeout)["seconds"]
            entry["info"] = worker.request("info", timeout=30)["info"]
            if tool.startswith("sshfleet"):
                entry["servicers"] = _servicers(worker)
            entry["probe_before"] = worker.request("probe", timeout=30)
        except WorkerError as exc:
            entry["errors"].append(str(exc))
            run.say(f"warm: {tool} could not open {k} hosts: {str(exc).splitlines()[0]}")
            _close(worker, entry)
            continue
        entry.update(times=[], cpu=0.0, children_cpu=0.0, wall=0.0)
        entry["samples"] = [_sample(entry["probe_before"], 0)]
        live.append(tool)
    blocks = max(1, min(10, rounds))
    per_block = {t: math.ceil(min(rounds, (fewer or {}).get(t, rounds)) / blocks) for t in tools}
    for b in range(blocks):
        for tool in _alternate(list(live), b):
            entry = out[tool]
            try:
                n = per_block[tool]
                reply = run.worker(tool).request("rounds", n=n, timeout=60 + n * (0.5 + 0.05 * k))
            except WorkerError as exc:
                entry["errors"].append(str(exc))
                run.say(f"warm: {tool} on {k} hosts FAILED: {str(exc).splitlines()[0]}")
                live.remove(tool)
                _close(run.worker(tool), entry)
                continue
            entry["times"] += reply["times"]
            for name in ("cpu", "children_cpu", "wall"):
                entry[name] += reply[name]
            with contextlib.suppress(WorkerError):  # after each block: do threads, fds or memory grow with calls?
                probe = run.worker(tool).request("probe", timeout=30)
                entry["samples"].append(_sample(probe, len(entry["times"])))
    for tool in live:
        entry = out[tool]
        worker = run.worker(tool)
        try:
            entry["probe_after"] = worker.request("probe", timeout=30)
        except WorkerError as exc:
            entry["errors"].append(str(exc))
        _close(worker, entry)
    for tool in tools:
        entry = out[tool]
        times = entry.get("times") or []
        entry["round_ms"] = _summary([t * 1000 for t in times])
        if times:
            calls = len(times) * k
            entry["cpu_us_per_call"] = (entry["cpu"] + entry["children_cpu"]) / calls * 1e6
            entry["cpu_us_per_call_self"] = entry["cpu"] / calls * 1e6
            entry["rounds"] = len(times)
        entry["times"] = [round(t, 6) for t in times]
        if times:
            run.say(
                f"warm: {tool:<16} {k:>3} hosts  median {entry['round_ms']['median']:7.2f} ms  "
                f"p99 {entry['round_ms']['p99']:7.2f} ms  cpu {entry['cpu_us_per_call']:7.0f} µs/call"
            )
    return out


def _sample(probe: dict[str, Any], rounds: int) -> dict[str, Any]:
    keys = ("python_threads", "os_threads", "fds", "rss_kib", "children")
    return {"rounds": rounds, **{key: probe.get(key) for key in keys}}


def _close(worker: Worker, entry: dict[str, Any]) -> None:
    try:
        entry["close_seconds"] = worker.request("close", timeout=60)["seconds"]
        entry["probe_after_close"] = worker.request("probe", timeout=30)
    except WorkerError as exc:
        entry["errors"].append(f"close: {exc}")
        worker.kill()


def _servicers(worker: Worker) -> dict[str, Any]:
    """Memory and threads of the servicer processes on the hosts (global pids: hosts share our pid space)."""
    started = worker.request("started", timeout=30)["started"]
    stats = [_proc.status(int(s["pid"])) for s in started.values()]
    rss = [s["VmRSS"] for s in stats if "VmRSS" in s]
    threads = [s["Threads"] for s in stats if "Threads" in s]
    return {
        "count": len(started),
        "round_trips": _summary([s["round_trips"] for s in started.values()]),
        "rss_kib": _summary(rss),
        "threads": _summary(threads),
    }


# --------------------------------------------------------------------------------------------- streaming


def stream(run: Run) -> None:
    """One host's streaming throughput, MB/s (10^6 bytes/s)."""
    tools = run.wanted(STREAM_TOOLS)
    nbytes = run.plan.stream_bytes
    out: dict[str, Any] = {t: {"errors": [], "runs": []} for t in tools}
    run.results["stream"] = {"bytes": nbytes, "tools": out}
    live = []
    for tool in tools:
        worker = run.worker(tool)
        try:
            worker.request("open", n=1, timeout=120)
            out[tool]["info"] = worker.request("info", timeout=30)["info"]
            worker.request("stream", nbytes=8 << 20, timeout=120)  # warm-up: windows open, code paths hot
            live.append(tool)
        except WorkerError as exc:
            out[tool]["errors"].append(str(exc))
            _close(worker, out[tool])
    for rep in range(run.plan.stream_reps):
        for tool in _alternate(list(live), rep):
            try:
                reply = run.worker(tool).request("stream", nbytes=nbytes, timeout=60 + nbytes / 2e6)
            except WorkerError as exc:
                out[tool]["errors"].append(str(exc))
                live.remove(tool)
                continue
            mbps = reply["bytes"] / reply["seconds"] / 1e6
            # Controller CPU per GB (process + ssh children): less noisy than MB/s on a shared machine.
            cpu_per_gb = (reply["cpu"] + reply["children_cpu"]) / reply["bytes"] * 1e9
            out[tool]["runs"].append(mbps)
            out[tool].setdefault("cpu_s_per_gb_runs", []).append(cpu_per_gb)
            run.say(f"stream: {tool:<16} {mbps:8.1f} MB/s  controller CPU {cpu_per_gb:5.2f} s/GB")
    for tool in tools:
        _close(run.worker(tool), out[tool])
        out[tool]["mb_per_s"] = _summary(out[tool]["runs"])
        out[tool]["cpu_s_per_gb"] = _summary(out[tool].get("cpu_s_per_gb_runs", []))


# --------------------------------------------------------------------------------------------- many hosts


def scale(run: Run) -> None:
    """Many hosts from one controller, on testbeds joined into one fleet.

    First the controller-CPU comparison with Mitogen at ``plan.cpu_hosts`` (warm rounds, ssh children
    included, as in the warm phase), then every host answering ``plan.scale_calls`` rounds at
    ``plan.scale_hosts`` with the controller's threads, fds and RSS sampled every tenth of the rounds.
    """
    n = run.plan.scale_hosts
    out: dict[str, Any] = {"hosts": n, "errors": [], "rounds_wanted": run.plan.scale_calls}
    run.results["scale"] = out
    need = n - len(run.bed.hosts)
    try:
        index = 2
        while need > 0:
            size = min(need, 99)
            run.say(f"scale: bringing up testbed bench{index} with {size} more hosts")
            t0 = time.monotonic()
            extra = Testbed(f"bench{index}", size)
            run.extra_beds.append(extra)
            extra.up(timeout=60 + size)
            out.setdefault("testbed_up_seconds", []).append(time.monotonic() - t0)
            need -= size
            index += 1
        beds = [run.bed, *run.extra_beds]
        hosts = [h for bed in beds for h in bed.hosts][:n]
        if not _fleet.payload_dirs(run.bed.hosts[0], run.env["user"]):  # no cold phase ran: cache one host
            run.worker("sshfleet").request("cold", n=1, timeout=300)
        out["seeded_payloads"] = _fleet.seed_cache(run.bed.hosts[0], hosts[1:], run.env["user"])
        out["testbeds"] = len(beds)
    except Exception as exc:
        out["errors"].append(f"testbed: {type(exc).__name__}: {exc}")
        run.say(f"scale: cannot build {n} hosts: {exc}")
        return
    tmp = Path(run.env["tmp"]) / "scale"
    tmp.mkdir(exist_ok=True)
    env = _fleet.joined_env(beds, tmp, run.env["user"])
    main_env, main_workers = run.env, run.workers
    run.stop_workers()
    run.env, run.workers = env, {}
    try:
        cpu_hosts = run.plan.cpu_hosts
        if 0 < cpu_hosts < n:
            run.say(f"scale: controller CPU per host-call at {cpu_hosts} hosts, {run.plan.cpu_rounds} rounds")
            warm(run, cpu_hosts, ["sshfleet", "mitogen"], run.plan.cpu_rounds, open_timeout=run.plan.scale_open_timeout)
        # Mitogen is there for its round time and CPU: a fifth of the rounds gives their medians, in less time.
        fewer = {"mitogen": max(10, run.plan.scale_calls // 5)}
        run.say(f"scale: {n} hosts, {run.plan.scale_calls} rounds: {', '.join(run.wanted(run.plan.scale_tools))}")
        warm(run, n, run.plan.scale_tools, run.plan.scale_calls, open_timeout=run.plan.scale_open_timeout, fewer=fewer)
    finally:
        run.stop_workers()
        run.env, run.workers = main_env, main_workers
    sshfleet = run.results["warm"][f"{n}"].get("sshfleet", {})
    if "probe_before" in sshfleet and "probe_after" in sshfleet:
        out["threads"] = {
            "python_before_calls": sshfleet["probe_before"]["python_threads"],
            "python_after_calls": sshfleet["probe_after"]["python_threads"],
            "os_before_calls": sshfleet["probe_before"]["os_threads"],
            "os_after_calls": sshfleet["probe_after"]["os_threads"],
            "calls": sshfleet.get("rounds", 0),
        }
    # A round raises unless every host answered; an error in close() is reported apart (close_errors).
    round_errors = [e for e in sshfleet.get("errors") or [] if not e.startswith("close:")]
    out["all_answered"] = sshfleet.get("rounds", 0) >= run.plan.scale_calls and not round_errors
    out["close_errors"] = [e for e in sshfleet.get("errors") or [] if e.startswith("close:")]
    out["flat"] = flat(sshfleet.get("samples") or [])


def flat(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """First vs last sample and the max of threads, fds and RSS; flat = threads and fds end where they
    started and never rose above it by more than 2, and RSS ends within 10% of where it started."""
    if len(samples) < 2:
        return {"flat": False, "why": "fewer than two samples"}
    first, last = samples[0], samples[-1]
    out: dict[str, Any] = {}
    ok = True
    for key in ("os_threads", "fds", "rss_kib"):
        values = [s[key] for s in samples if s.get(key) is not None]
        if not values:
            continue
        out[key] = {"first": values[0], "last": values[-1], "max": max(values)}
        if key == "rss_kib":
            ok = ok and values[-1] <= values[0] * 1.10
        else:
            ok = ok and values[-1] <= values[0] and max(values) <= values[0] + 2
    out["flat"] = ok and first.get("rounds") == 0 and last.get("rounds", 0) > 0
    return out
