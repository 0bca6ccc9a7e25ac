"""A worker process running one tool: ``python -m bench.worker TOOL`` reads JSON requests, one per line.

One process per tool keeps every tool's threads, CPU time and memory apart, and lets the parent kill a tool
that hangs (a Python thread cannot be killed). The first stdin line is the Env; each request is
``{"op": ..., ...}`` and gets one reply line ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.

Ops: version, cold(n), open(n, warmup), rounds(n), close, stream(nbytes), info, probe, started.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from typing import Any, BinaryIO

from bench import _proc
from bench.baselines import OpenSsh, Paramiko, ParamikoSeam
from bench.tools import TOOLS, Env, Tool


def _rounds(tool: Tool, n: int) -> dict[str, Any]:
    times = []
    with _proc.CpuMeter() as meter:
        for _ in range(n):
            t = time.perf_counter()
            tool.round()
            times.append(time.perf_counter() - t)
    return {"times": times, "cpu": meter.cpu, "children_cpu": meter.children, "wall": meter.wall}


def _probe() -> dict[str, Any]:
    """Threads, open file descriptors and memory of this process, as the many-hosts phase reports them."""
    st = _proc.status()
    return {
        "python_threads": threading.active_count(),
        "os_threads": st.get("Threads"),
        "fds": len(os.listdir("/proc/self/fd")) - 1,  # less the one listdir itself holds open
        "rss_kib": st.get("VmRSS"),
        "peak_rss_kib": st.get("VmHWM"),
        "children": len(_proc.descendants(os.getpid())),
    }


def handle(tool: Tool, req: dict[str, Any]) -> dict[str, Any]:
    op = req["op"]
    if op == "exit":
        return {}
    if op == "version":
        return {"version": tool.version()}
    if op == "cold":
        return tool.cold(int(req["n"]))
    if op == "open":
        t0 = time.perf_counter()
        tool.open(int(req["n"]))
        opened = time.perf_counter() - t0
        for _ in range(int(req.get("warmup", 0))):
            tool.round()
        return {"seconds": opened}
    if op == "rounds":
        return _rounds(tool, int(req["n"]))
    if op == "close":
        t0 = time.perf_counter()
        tool.close()
        return {"seconds": time.perf_counter() - t0}
    if op == "stream":
        with _proc.CpuMeter() as meter:
            got = tool.stream(int(req["nbytes"]))
        if got != int(req["nbytes"]):
            raise RuntimeError(f"read {got} bytes, expected {req['nbytes']}")
        return {"seconds": meter.wall, "bytes": got, "cpu": meter.cpu, "children_cpu": meter.children}
    if op == "info":
        return {"info": tool.info()}
    if op == "probe":
        return _probe()
    if op == "started":
        return {"started": tool.started()}  # type: ignore[attr-defined]
    raise ValueError(f"unknown op {op!r}")


def main(argv: list[str]) -> int:
    name = argv[0]
    # Requests and replies get private file descriptors: fd 0 becomes /dev/null and fd 1 goes to stderr, so
    # a library that reads stdin (invoke does) or prints cannot corrupt the protocol.
    requests: BinaryIO = os.fdopen(os.dup(0), "rb")
    replies: BinaryIO = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    env = Env.from_dict(json.loads(requests.readline()))
    tool = {**TOOLS, **{t.name: t for t in (Paramiko, ParamikoSeam, OpenSsh)}}[name](env)
    for line in requests:
        req = json.loads(line)
        try:
            reply = {"ok": True, **handle(tool, req)}
        except Exception as exc:
            traceback.print_exc()
            # First line: what the tables show; then where it came from, kept in latest.json.
            where = "".join(traceback.format_exc().splitlines(keepends=True)[-12:])
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:4000] + "\n" + where}
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()
        if req["op"] == "exit":
            break
    try:
        tool.close()
    except Exception:
        traceback.print_exc()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
