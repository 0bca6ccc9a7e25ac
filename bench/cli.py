"""``python -m bench``: bring up the testbed, run the phases, write bench/results/, tear everything down.

The testbed and the workers go away at the end whatever happens (failure, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from bench import _fleet, adhoc, files, phases, report
from bench._workers import WorkerError
from bench.phases import ALL_TOOLS, Plan, Run
from sshfleet.testbed import MAX_HOSTS, Testbed

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("cold", "warm", "stream", "files", "adhoc", "scale")
BED_NAME = "bench"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--sizes", default="1,8,32", help="fleet sizes, comma-separated (default 1,8,32)")
    p.add_argument("--rounds", type=int, default=None, help="warm fan-out rounds per tool and size (default 200)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and rounds: a smoke run in < 5 min")
    p.add_argument(
        "--only",
        default=None,
        help=f"comma-separated tools and/or phases to run (tools: {', '.join(ALL_TOOLS)}; ad-hoc tools: "
        f"{', '.join(adhoc.ADHOC_TOOLS)}; phases: {', '.join(PHASES)}); sshfleet always runs",
    )
    p.add_argument(
        "--user",
        default="fleet",
        choices=("fleet", "root"),
        help="login user on the hosts (default fleet: /usr/bin/python3 and a plain shell; root's .bashrc "
        "runs pyenv init, which costs every exec'd command hundreds of ms)",
    )
    p.add_argument("--scale-hosts", type=int, default=None, help="hosts of the scale phase (default 256; --quick: "
                   "128, where the CPU comparison with Mitogen is made too)")  # fmt: skip
    p.add_argument("--adhoc-reps", type=int, default=None, help="runs per tool and size in the ad-hoc phase "
                   "(default 10)")  # fmt: skip
    p.add_argument("--out", default=None, help="results directory (default bench/results, or "
                   "bench/results/partial for --quick/--only runs)")  # fmt: skip
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 1:
        raise SystemExit("--sizes needs positive integers")
    every_tool = set(ALL_TOOLS) | set(adhoc.ADHOC_TOOLS)
    tools, wanted_phases = every_tool, set(PHASES)
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = names - every_tool - set(PHASES)
        if unknown:
            raise SystemExit(f"--only: unknown {', '.join(sorted(unknown))}")
        if names & every_tool:
            tools = (names & every_tool) | {"sshfleet"}
        if names & set(PHASES):
            wanted_phases = names & set(PHASES)
    quick = args.quick
    return Plan(
        sizes=sizes,
        rounds=args.rounds or (50 if quick else 200),
        cold_reps=1 if quick else 3,
        empty_cache_reps=1 if quick else 3,
        stream_bytes=(32 if quick else 128) << 20,
        stream_reps=2 if quick else 7,
        scale_hosts=args.scale_hosts or (128 if quick else 256),
        scale_calls=100 if quick else 1000,
        scale_tools=["sshfleet", "mitogen"],
        tools=tools,
        phases=wanted_phases,
        adhoc_reps=args.adhoc_reps or (1 if quick else 10),
        cpu_rounds=50 if quick else 200,
    )


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def versions(run: Run) -> dict[str, str]:
    out = {}
    for tool in sorted(run.plan.tools & set(ALL_TOOLS)):
        try:
            out[tool] = run.worker(tool).request("version", timeout=60)["version"]
        except WorkerError as exc:
            out[tool] = f"error: {exc}"
    for dist in ("paramiko", "grpcio", "protobuf", "gevent", "ssh2-python"):
        with contextlib.suppress(Exception):
            from importlib import metadata

            out.setdefault(dist, metadata.version(dist))
    proc = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True, check=False)
    out["sshd"] = (proc.stderr or proc.stdout).strip().splitlines()[0] if (proc.stderr or proc.stdout) else "?"
    return out


def shell_baseline(bed: Testbed, reps: int = 3) -> dict[str, Any]:
    """Median seconds of a whole ``ssh host true`` per login user: how much the login shell alone costs."""
    out: dict[str, Any] = {}
    host = bed.hosts[0].name
    for user in ("fleet", "root"):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            proc = subprocess.run(
                ["ssh", "-F", str(bed.ssh_config), "-l", user, host, "true"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                times.append(time.perf_counter() - t0)
        out[f"ssh_true_{user}_s"] = sorted(times)[len(times) // 2] if times else None
    return out


def main_bed_hosts(plan: Plan) -> int:
    """Hosts of the main testbed: the largest fleet size, and when the scale phase runs as many as a testbed
    holds (256 hosts = three testbeds of 99, 99 and 58)."""
    wanted = [*plan.sizes, *(plan.adhoc_sizes if "adhoc" in plan.phases else [])]
    if "scale" in plan.phases:
        wanted.append(min(MAX_HOSTS, plan.scale_hosts))
    return max(wanted)


def raise_nofile() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard limit (256 hosts need a few thousand descriptors);
    the workers and tools inherit it. Returns (soft, hard) as now set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    partial = args.quick or bool(args.only)
    out_dir = Path(args.out) if args.out else (RESULTS / "partial" if partial else RESULTS)
    if os.geteuid() != 0:
        print("python -m bench needs root (the testbed uses network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    # Also when started in the background by a shell, which makes the process ignore SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix="sshfleet-bench-"))
    started = time.monotonic()
    bed_hosts = main_bed_hosts(plan)
    bed = Testbed(BED_NAME, bed_hosts)
    nofile = raise_nofile()
    run: Optional[Run] = None
    interrupted = False
    try:
        for name in (BED_NAME, *(f"{BED_NAME}{i}" for i in range(2, 6))):  # testbeds left by a killed earlier run
            with contextlib.suppress(Exception):
                Testbed(name).down()
        _say(f"testbed {BED_NAME}: bringing up {bed_hosts} hosts (open files limit {nofile[0]})")
        bed.up(timeout=60 + bed_hosts)
        run = Run(plan=plan, bed=bed, env=_fleet.env_of(bed, tmp, args.user), log_dir=tmp, say=_say)
        run.results.update(
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            argv=sys.argv[1:] if argv is None else argv,
            plan={k: sorted(v) if isinstance(v, set) else v for k, v in vars(plan).items()},
            machine={**machine(), "nofile": nofile},
        )
        run.results["versions"] = versions(run)
        _say("versions: " + ", ".join(f"{k} {v}" for k, v in run.results["versions"].items()))
        run.results["user"] = args.user
        run.results["baseline"] = shell_baseline(bed)
        _say(f"baseline: {run.results['baseline']}")
        _phase(run, "cold", lambda: phases.cold(run))
        for k in plan.sizes:
            _phase(
                run, "warm", lambda k=k: phases.warm(run, k, phases.WARM_TOOLS, plan.rounds, fewer=phases.SLOW_PEERS)
            )
        _phase(run, "stream", lambda: phases.stream(run))
        _phase(run, "files", lambda: files.files(run))
        run.stop_workers()
        _phase(run, "adhoc", lambda: adhoc.adhoc(run))
        _phase(run, "scale", lambda: phases.scale(run))
    except KeyboardInterrupt:
        interrupted = True
        _say("interrupted: tearing down")
    finally:
        if run is not None:
            run.stop_workers(quick=interrupted)
            for extra in run.extra_beds:
                with contextlib.suppress(Exception):
                    extra.down()
        with contextlib.suppress(Exception):
            bed.down()
        shutil.rmtree(tmp, ignore_errors=True)
    if run is None or interrupted:
        return 130 if interrupted else 1
    run.results["machine"]["loadavg_end"] = os.getloadavg()
    run.results["total_seconds"] = time.monotonic() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(run.results, indent=1, default=str) + "\n")
    report.write(run.results, out_dir)
    _say(f"done in {run.results['total_seconds']:.0f} s: {out_dir}/results.md, latest.json, plot.png")
    return 0


def _phase(run: Run, name: str, fn: Any) -> None:
    if name not in run.plan.phases:
        return
    try:
        fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a phase's own bug must not lose the other phases' numbers
        import traceback

        run.results.setdefault("errors", []).append(f"{name}: {traceback.format_exc()}")
        _say(f"{name}: FAILED: {type(exc).__name__}: {exc}")
