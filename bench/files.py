"""The files phase: a 100 MB ``get`` from one host, sshfleet (both transports) against ``scp`` and ``sftp``.

Every tool does the whole job a user would time: connect, authenticate, copy the file into a local directory,
disconnect; in alternating order, medians reported as MB/s (10^6 bytes/s) and as a ratio to ``scp`` in the
same run. The copy is checked by size every time, so a tool that fails does not look fast.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench.phases import Run
from sshfleet import Fleet

SIZE = 100_000_000
REMOTE = "/tmp/bench-files.bin"
TOOLS = ("sshfleet", "sshfleet-openssh", "scp", "sftp")


def _sshfleet(run: Run, transport: str) -> Callable[[Path], None]:
    def get(into: Path) -> None:
        host = run.bed.hosts[0].name
        with Fleet([host], ssh_options=run.bed.ssh_options(run.env["user"]), transport=transport) as fleet:
            fleet.get(REMOTE, into).raise_for_status()

    return get


def _openssh(run: Run, tool: str) -> Callable[[Path], None]:
    def get(into: Path) -> None:
        host = run.bed.hosts[0].name
        config = ["-F", str(run.bed.ssh_config), "-o", f"User={run.env['user']}", "-o", "BatchMode=yes", "-q"]
        argv = [tool, *config, f"{host}:{REMOTE}", str(into / "copy.bin")]
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=300, check=True)

    return get


def files(run: Run) -> None:
    """Fill ``run.results["files"]``: per tool the MB/s runs, their median, and the ratio to scp's median."""
    bed = run.bed
    host = bed.hosts[0].name
    bed.run(host, f"head -c {SIZE} /dev/urandom > {REMOTE} && chmod 644 {REMOTE}")
    jobs: dict[str, Callable[[Path], None]] = {
        "sshfleet": _sshfleet(run, "paramiko"),
        "sshfleet-openssh": _sshfleet(run, "openssh"),
        "scp": _openssh(run, "scp"),
        "sftp": _openssh(run, "sftp"),
    }
    reps = 1 if run.plan.stream_reps <= 2 else 5
    out: dict[str, Any] = {t: {"runs": [], "errors": []} for t in TOOLS}
    run.results["files"] = {"bytes": SIZE, "what": "get of one file from one host, connect included", "tools": out}
    try:
        for rep in range(reps + 1):  # the first round warms the page cache on both sides and is not counted
            order = list(TOOLS) if rep % 2 == 0 else list(reversed(TOOLS))
            for tool in order:
                into = Path(tempfile.mkdtemp(prefix="bench-files-"))
                try:
                    started = time.perf_counter()
                    jobs[tool](into)
                    seconds = time.perf_counter() - started
                    copies = [p for p in into.rglob("*") if p.is_file()]
                    if [p.stat().st_size for p in copies] != [SIZE]:
                        raise RuntimeError(f"expected one copy of {SIZE} bytes, found {copies}")
                except Exception as exc:  # a tool's failure is recorded, the others go on
                    out[tool]["errors"].append(f"{type(exc).__name__}: {exc}")
                    continue
                finally:
                    shutil.rmtree(into, ignore_errors=True)
                if rep > 0:
                    out[tool]["runs"].append(SIZE / seconds / 1e6)
                    run.say(f"files: {tool:<16} {SIZE / seconds / 1e6:8.1f} MB/s")
    finally:
        bed.run(host, f"rm -f {REMOTE}", check=False)
    base = statistics.median(out["scp"]["runs"]) if out["scp"]["runs"] else None
    for tool in TOOLS:
        runs = out[tool]["runs"]
        out[tool]["mb_per_s"] = statistics.median(runs) if runs else None
        out[tool]["vs_scp"] = round(out[tool]["mb_per_s"] / base, 3) if runs and base else None
    run.say("files: " + ", ".join(f"{t} {out[t]['vs_scp']}x scp" for t in TOOLS))
