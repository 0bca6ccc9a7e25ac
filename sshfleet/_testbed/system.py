"""Machine-wide plumbing for the testbed: commands, packages, users, address allocation, processes.

Everything here acts on the whole machine (users, /proc, the lock that serialises address allocation),
which is why it is kept apart from the per-testbed logic in ``sshfleet.testbed``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import signal
import subprocess
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Optional

from sshfleet.errors import SshFleetError, UsageError

SSHD = "/usr/sbin/sshd"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOCK_PATH = "/run/sshfleet-testbed.lock"
NETNS_DIR = "/run/netns"
# 198.18.0.0/15 (RFC 2544 benchmarking) holds 512 /24s: 198.18.0-255 then 198.19.0-255.
SUBNET_COUNT = 512


class TestbedError(SshFleetError, RuntimeError):
    """The testbed could not be built, changed or torn down (a machine problem, not a caller mistake)."""

    __test__ = False  # not a pytest test class despite the name


def command(
    argv: Sequence[str], *, check: bool = True, input: Optional[str] = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a plumbing command with a deadline; on failure raise TestbedError carrying its stderr."""
    env = {"PATH": ROOT_PATH, "LANG": "C.UTF-8"}
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"{' '.join(argv)} did not finish within {timeout:g}s") from exc
    except OSError as exc:
        raise TestbedError(f"cannot run {argv[0]}: {exc}") from exc
    if check and proc.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("the testbed needs root (network namespaces, bridges, sshd on port 22)")


def ensure_sshd() -> None:
    """Install openssh-server when sshd is missing; sshd also needs its privilege-separation directory."""
    if not os.path.exists(SSHD):
        env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
        command([*env_prefix, "apt-get", "update"], timeout=600)
        command(
            [*env_prefix, "apt-get", "install", "-y", "--no-install-recommends", "openssh-server"],
            timeout=900,
        )
        if not os.path.exists(SSHD):
            raise TestbedError(f"openssh-server installed but {SSHD} is still missing")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


def ensure_user(name: str) -> pwd.struct_passwd:
    """Create the non-root login user once per machine, with a usable (not locked) account.

    With ``UsePAM no`` sshd refuses accounts whose password field starts with ``!`` (useradd's default),
    so the field is set to ``*``: no password can match it, but the account is not locked.
    """
    with machine_lock():
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            command(["useradd", "-m", "-s", "/bin/bash", name])
            entry = pwd.getpwnam(name)
        with open("/etc/shadow", encoding="utf-8") as f:
            locked = any(line.startswith(f"{name}:!") for line in f)
        if locked:
            command(["usermod", "-p", "*", name])
    return entry


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Serialise choices that must be unique on the machine (subnets, users) across processes."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def subnet_prefix(k: int) -> str:
    """The first three octets of testbed subnet ``k``."""
    return f"198.{18 + k // 256}.{k % 256}"


def used_prefixes() -> set[str]:
    """/24 prefixes already taken on this machine by an interface address or a route."""
    used: set[str] = set()
    addrs = json.loads(command(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in addrs:
        for info in link.get("addr_info", []):
            used.add(info["local"].rsplit(".", 1)[0])
    routes = json.loads(command(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for route in routes:
        dst = route.get("dst", "")
        if dst[:1].isdigit():
            used.add(dst.split("/")[0].rsplit(".", 1)[0])
    return used


def pick_subnet(name: str) -> int:
    """A free subnet index, starting from a hash of the name so a testbed usually gets the same one.

    Call with ``machine_lock()`` held and claim the subnet (bridge address) before releasing it.
    """
    used = used_prefixes()
    start = zlib.crc32(name.encode()) % SUBNET_COUNT
    for step in range(SUBNET_COUNT):
        k = (start + step) % SUBNET_COUNT
        if subnet_prefix(k) not in used:
            return k
    raise TestbedError("every /24 of 198.18.0.0/15 is in use on this machine")


def netns_inode(netns: str) -> Optional[int]:
    """The inode identifying a named network namespace, or None when it does not exist."""
    try:
        return os.stat(os.path.join(NETNS_DIR, netns)).st_ino
    except OSError:
        return None


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def pids_by_netns(inodes: set[int]) -> dict[int, list[int]]:
    """Live processes whose network namespace is one of ``inodes``, in one pass over /proc."""
    found: dict[int, list[int]] = {ino: [] for ino in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:  # exited meanwhile, or a zombie (no namespaces any more)
            continue
        if ino in found:
            found[ino].append(int(entry))
    for pids in found.values():
        pids.sort()
    return found


def describe_pid(pid: int) -> str:
    """``pid 123 (user): argv`` for leftover reports."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        uid = os.stat(f"/proc/{pid}").st_uid
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
    except OSError:
        return f"pid {pid} (exited)"
    return f"pid {pid} ({user}): {argv or '[kernel or zombie]'}"


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_pids(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_netns_processes(inodes: set[int], deadline: float) -> list[int]:
    """SIGKILL every process in the given network namespaces until none is left; returns survivors."""
    remaining: list[int] = []
    while True:
        remaining = [pid for pids in pids_by_netns(inodes).values() for pid in pids if pid_alive(pid)]
        if not remaining or time.monotonic() > deadline:
            return remaining
        kill_pids(remaining)
        time.sleep(0.02)


def read_pid_file(path: str) -> Optional[int]:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


SUDOERS_DIR = "/etc/sudoers.d"
SUDO_LOCK_PATH = "/run/sshfleet-testbed-sudo.lock"
SUDO_TIMESTAMP_DIR = "/run/sudo/ts"


@contextlib.contextmanager
def sudo_rule(user: str, rule: str, password: Optional[str] = None) -> Iterator[str]:
    """Let ``user`` run sudo as ``rule`` says (``ALL=(ALL) NOPASSWD: ALL``) while the block runs; yield the path
    of the drop-in. With ``password``, ``user`` also gets that login password for the block.

    /etc/sudoers and /etc/shadow are the machine's, shared by every testbed (and by the machine itself): the
    drop-in is checked with ``visudo -cf`` before sudo can see it, is mode 0440, and is removed afterwards, with
    the user's password field put back as it was. A machine-wide lock keeps two blocks (two test processes)
    from seeing each other's rules. ``timestamp_timeout=0``: sudo never reuses an earlier success, so each start
    asks again, and a test of a wrong password cannot pass on a cached right one.
    """
    if "\n" in rule or "\n" in user:
        raise UsageError("a sudo rule is one line")
    fd = os.open(SUDO_LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # sudo skips names holding "." (and ending in "~"): the file is invisible to it until renamed.
        final = os.path.join(SUDOERS_DIR, f"sshfleet-testbed-{user}")
        staging = os.path.join(SUDOERS_DIR, f".sshfleet-testbed-{user}.new")
        text = f"Defaults:{user} timestamp_timeout=0, !lecture\n{user} {rule}\n"
        os.makedirs(SUDOERS_DIR, mode=0o755, exist_ok=True)
        with open(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o440), "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(staging, 0o440)
        try:
            command(["visudo", "-cf", staging])
            os.rename(staging, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
        saved = _password_field(user) if password is not None else None
        try:
            if password is not None:
                # chpasswd reads "user:password" on stdin: the password is in no process's argv.
                command(["chpasswd"], input=f"{user}:{password}\n")
            yield final
        finally:
            try:
                if saved is not None:
                    command(["chpasswd", "-e"], input=f"{user}:{saved}\n")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(final)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(SUDO_TIMESTAMP_DIR, user))  # sudo's record of our tries
    finally:
        os.close(fd)


def _password_field(user: str) -> str:
    with open("/etc/shadow", encoding="utf-8") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name == user:
                return rest.split(":", 1)[0]
    raise TestbedError(f"{user} has no /etc/shadow entry")
