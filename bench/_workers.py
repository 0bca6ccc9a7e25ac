"""The parent's handle on a worker process: send a request, wait for its reply, never past a deadline.

A worker that misses its deadline is killed (its whole process group, by id) and started again on the next
request, so one hung tool costs one measurement, not the run.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent


class WorkerError(Exception):
    """The request failed in the tool (the message is the tool's error) or the worker died or timed out."""


class Worker:
    def __init__(self, tool: str, env: dict[str, Any], log_dir: Path) -> None:
        self.tool = tool
        self.env = env
        self.log_path = log_dir / f"worker-{tool}.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._buf = b""

    def _start(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.worker", self.tool],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                start_new_session=True,  # Ctrl-C reaches the parent only; the parent stops the workers
            )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(self.env).encode() + b"\n")
        proc.stdin.flush()
        self._buf = b""
        return proc

    def request(self, op: str, timeout: float, **args: Any) -> dict[str, Any]:
        """Run one op in the worker; returns its reply, raises WorkerError on failure or timeout."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            self.kill()
            raise WorkerError(f"worker {self.tool} is gone: {exc}{self._tail()}") from exc
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerError(f"{op} did not finish within {timeout:.0f}s (worker killed){self._tail()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self.kill()
                    raise WorkerError(f"worker {self.tool} died during {op}{self._tail()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(reply["error"])
        return reply

    def _tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()[-8:]
        except OSError:
            return ""
        return ("\n  worker log: " + "\n  ".join(lines)) if lines else ""

    def kill(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
        proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the worker to close its tool and exit; kill it if it does not within ``timeout``."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.request("exit", timeout=timeout)
                self.proc.wait(timeout)
        except (WorkerError, subprocess.TimeoutExpired):
            pass
        self.kill()
