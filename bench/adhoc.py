"""The ad-hoc phase: one command on 1, 16 and 32 hosts, each tool run as a whole process as a user types it.

``sshfleet run -b``, ``ssh`` (one host), ``clush -b``, Debian's ``parallel-ssh -i``, ``ansible -m command``,
``sshfleet ping`` and a Fabric script, all with their default options, pointed at the testbed's ssh_config
(its known_hosts and key, strict host-key checking) and the login user. Per run: wall time until the process
exits, and the controller CPU it cost — user + sys of the whole process tree, read from
``getrusage(RUSAGE_CHILDREN)`` around the run, which counts every descendant that was waited for (the ssh
clients a tool starts included). Processes a tool leaves behind (Ansible's ControlPersist masters) are adopted
by this process while the phase runs (a child subreaper), stopped after the clock stops and counted in the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from bench._workers import REPO
from bench.phases import Run

# Order within a repetition (reversed every other repetition). 1-host-only tools are skipped at other sizes.
ADHOC_TOOLS = [
    "sshfleet-run", "sshfleet-run-live", "ssh", "clush", "pssh", "ansible-adhoc", "sshfleet-ping", "fabric-script",
]  # fmt: skip
ONE_HOST_ONLY = {"sshfleet-run-live", "ssh"}
COMMAND = ["uname", "-n"]
_PR_SET_CHILD_SUBREAPER = 36


class ToolFailed(Exception):
    """The tool exited non-zero, missed its deadline, or did not show every host's answer."""


def _hostrange(n: int) -> str:
    return "node01" if n == 1 else f"node[01-{n:02d}]"


def commands(run: Run, n: int, scratch: Path) -> dict[str, list[str]]:
    """argv per tool for ``n`` hosts, exactly as run (argv[0] is found on PATH, the venv's bin first)."""
    cfg, user = str(run.bed.ssh_config), run.env["user"]
    names = [h.name for h in run.bed.hosts[:n]]
    hosts_file = scratch / f"hosts-{n}.txt"
    hosts_file.write_text("\n".join(names) + "\n")
    inventory = _inventory(run, names, scratch)
    out = {
        "sshfleet-run": ["sshfleet", "run", "-F", cfg, "-l", user, "-H", _hostrange(n), "-b", "--", *COMMAND],
        "clush": ["clush", "-o", f"-F {cfg}", "-l", user, "-w", _hostrange(n), "-b", *COMMAND],
        "pssh": ["parallel-ssh", "-x", f"-F {cfg}", "-l", user, "-h", str(hosts_file), "-i", *COMMAND],
        "ansible-adhoc": ["ansible", "all", "-i", inventory, "-m", "command", "-a", shlex.join(COMMAND), "-f", f"{n}"],
        "sshfleet-ping": ["sshfleet", "ping", "-F", cfg, "-l", user, "-H", _hostrange(n)],
        "fabric-script": ["python", "-m", "bench.fabric_run", "-F", cfg, "-l", user, *names, "--", *COMMAND],
    }
    if n == 1:
        out["sshfleet-run-live"] = ["sshfleet", "run", "-F", cfg, "-l", user, "-H", names[0], "--", *COMMAND]
        out["ssh"] = ["ssh", "-F", cfg, "-l", user, names[0], *COMMAND]
    return out


def _inventory(run: Run, names: list[str], scratch: Path) -> str:
    path = scratch / f"inventory-{len(names)}.ini"
    lines = ["[all]", *names, "", "[all:vars]", f"ansible_user={run.env['user']}"]
    lines.append(f"ansible_ssh_common_args=-F {run.bed.ssh_config}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _env(scratch: Path) -> dict[str, str]:
    """The tools' environment: the venv's bin first on PATH; Ansible without any ansible.cfg of ours."""
    empty_cfg = scratch / "ansible.cfg"
    empty_cfg.touch()
    return dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_CONFIG=str(empty_cfg),
        ANSIBLE_HOST_KEY_CHECKING="True",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(scratch / "ansible-tmp"),
    )


# Ansible variables set per run (a fresh ControlPath directory each time, so no run reuses another's masters).
ENV_SHOWN = ("ANSIBLE_CONFIG", "ANSIBLE_HOST_KEY_CHECKING")


def _expect(tool: str, names: list[str], stdout: str) -> None:
    """Every host's answer is in the output (``uname -n`` prints the host's name), or ToolFailed."""
    if tool == "sshfleet-ping":
        missing = [h for h in names if f"{h}  ok" not in stdout and f"{h} ok" not in stdout]
    elif tool == "ansible-adhoc":
        missing = [h for h in names if f"{h} | CHANGED | rc=0" not in stdout]
    else:
        missing = [h for h in names if stdout.count(h) < (2 if tool in ("clush", "pssh", "sshfleet-run") else 1)]
    if missing:
        raise ToolFailed(f"no answer shown for {', '.join(missing[:5])}: {stdout[-500:]!r}")


def _parent(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _children() -> set[int]:
    me = os.getpid()
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(p) == me}


def _reap_adopted(before: set[int], timeout: float = 10.0) -> int:
    """Stop and wait for the processes a tool left behind (now our children); returns how many there were."""
    left = _children() - before
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    pending = set(left)
    while pending:
        for pid in list(pending):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            pending.discard(pid)
        if pending:
            if time.monotonic() > deadline:
                for pid in pending:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.01)
    return len(left)


def measure(argv: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``argv`` to its end: wall seconds, CPU seconds of its whole process tree, its output."""
    before = _children()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO,
        start_new_session=True, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        _reap_adopted(before)
        raise ToolFailed(f"did not finish within {timeout:.0f} s (killed)") from None
    wall = time.perf_counter() - t0
    leftovers = _reap_adopted(before)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if proc.returncode != 0:
        raise ToolFailed(f"exit {proc.returncode}: {(err or out).strip()[-500:]}")
    return {"wall": wall, "cpu": cpu, "left_behind": leftovers, "stdout": out}


def _set_subreaper(on: bool) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)


def _timeout(tool: str, n: int) -> float:
    return 60 + (3.0 if tool == "ansible-adhoc" else 1.0) * n


def versions(env: dict[str, str]) -> dict[str, str]:
    """Versions of the command-line tools this phase runs (the libraries' are in the main versions list)."""
    out = {}
    for name, argv in (
        ("clush", ["clush", "--version"]),
        ("parallel-ssh (Debian pssh)", ["parallel-ssh", "--version"]),
        ("ssh", ["ssh", "-V"]),
    ):
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
            out[name] = (proc.stdout + proc.stderr).strip().splitlines()[0].removeprefix(f"{name} ")
        except (OSError, subprocess.SubprocessError, IndexError) as exc:
            out[name] = f"error: {exc}"
    return out


def adhoc(run: Run) -> None:
    """Fill ``run.results["adhoc"]``: per size and tool the runs (wall, CPU) and their medians."""
    sizes = [k for k in run.plan.adhoc_sizes if k <= len(run.bed.hosts)]
    wanted = [t for t in ADHOC_TOOLS if t in run.plan.tools or t.startswith("sshfleet")]
    scratch = Path(tempfile.mkdtemp(prefix="adhoc-", dir=run.env["tmp"]))
    env = _env(scratch)
    argvs = {k: commands(run, k, scratch) for k in sizes}
    per_size = {k: [t for t in wanted if t in argvs[k]] for k in sizes}
    out: dict[str, Any] = {
        "command": shlex.join(COMMAND),
        "reps": run.plan.adhoc_reps,
        "env": {k: env[k] for k in ENV_SHOWN},
        "commands": {str(k): {t: shlex.join(argvs[k][t]) for t in per_size[k]} for k in sizes},
        "versions": versions(env),
        "sizes": {str(k): {t: {"runs": [], "errors": []} for t in per_size[k]} for k in sizes},
    }
    run.results["adhoc"] = out
    _set_subreaper(True)
    try:
        # Unmeasured: sshfleet once per size (its payload cached on every host), every other tool once (its
        # files in the page cache).
        for k in sizes:
            for tool in per_size[k] if k == sizes[0] else [t for t in per_size[k] if t.startswith("sshfleet")]:
                _one(run, out, k, tool, argvs[k][tool], env, scratch, record=False)
        for rep in range(run.plan.adhoc_reps):
            for k in sizes:
                order = per_size[k] if rep % 2 == 0 else per_size[k][::-1]
                for tool in order:
                    _one(run, out, k, tool, argvs[k][tool], env, scratch, record=True)
    finally:
        _set_subreaper(False)
        shutil.rmtree(scratch, ignore_errors=True)
    for k, tools in out["sizes"].items():
        for entry in tools.values():
            runs = entry["runs"]
            entry["wall_s"] = statistics.median(r["wall"] for r in runs) if runs else None
            entry["cpu_s"] = statistics.median(r["cpu"] for r in runs) if runs else None
            entry["cpu_ms_per_host"] = entry["cpu_s"] / int(k) * 1000 if runs else None
            entry["n"] = len(runs)


def _one(
    run: Run, out: dict[str, Any], k: int, tool: str, argv: list[str], env: dict[str, str], scratch: Path,
    record: bool,
) -> Optional[dict[str, Any]]:  # fmt: skip
    entry = out["sizes"][str(k)][tool]
    names = [h.name for h in run.bed.hosts[:k]]
    run_env = env
    if tool == "ansible-adhoc":  # a fresh ControlPath directory: no run reuses an earlier run's masters
        run_env = dict(env, ANSIBLE_SSH_CONTROL_PATH_DIR=tempfile.mkdtemp(prefix="cp-", dir=scratch))
    try:
        result = measure(argv, run_env, _timeout(tool, k))
        _expect(tool, names, result.pop("stdout"))
    except (ToolFailed, OSError) as exc:
        entry["errors"].append(f"{'' if record else 'warm-up: '}{type(exc).__name__}: {exc}")
        run.say(f"adhoc: {tool} on {k} hosts FAILED: {str(exc).splitlines()[0] if str(exc) else exc!r}")
        return None
    if record:
        entry["runs"].append(result)
        run.say(f"adhoc: {tool:<18} {k:>3} hosts  {result['wall']:6.3f} s  CPU {result['cpu']:6.3f} s")
    return result
