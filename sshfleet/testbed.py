"""A fleet of real OpenSSH servers on this machine, for tests and benchmarks (needs root).

Host ``nodeNN`` of testbed NAME is a network namespace ``NAME-nodeNN`` on a bridge ``NAME-br`` with its
own address in 198.18.0.0/15 (the RFC 2544 benchmarking range), running its own ``sshd`` on port 22 in its
own mount and UTS namespaces: its hostname is ``nodeNN`` and it has a private /tmp and a private ``~/.cache``
for root and the ``fleet`` user (one ``~/.cache`` shared by all hosts of the testbed in shared-home mode, as
on an NFS testbed). Everything lives in a 0700 state directory that also holds ``ssh_config``,
``known_hosts``, ``inventory.ini`` and ``hosts.txt`` for the controller side.

Several testbeds can coexist: each has its own name, state directory, bridge and /24. ``down()`` removes all
of it and is idempotent; ``leftovers()`` is how the test suite proves that sshfleet cleaned up after itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Optional, Union

from sshfleet._options import SshOptions
from sshfleet._testbed import files, system
from sshfleet._testbed.files import HostLayout
from sshfleet._testbed.system import TestbedError
from sshfleet.errors import UsageError

__all__ = ["DEFAULT_NAME", "LOGIN_USER", "Testbed", "TestbedError", "TestbedHost"]

DEFAULT_NAME = "sf"
LOGIN_USER = "fleet"
MAX_HOSTS = 99
MAX_NAME = 11  # "NAME-v99" must fit the 15 characters of an interface name
HOST_OFFSET = 10  # host i gets .(10 + i); .1 is the controller's side of the bridge
STATE_FILE = "state.json"


@dataclass(frozen=True)
class TestbedHost:
    """One host of a testbed: its name (as in ssh_config and the inventory), address, namespace and files.

    ``cache_dirs`` maps a login user to the controller-side directory that the host sees as that user's
    ``~/.cache`` (the same directory for every host in shared-home mode).
    """

    __test__ = False

    name: str
    address: str
    netns: str
    index: int
    veth: str
    dir: Path
    tmp_dir: Path
    cache_dirs: dict[str, Path]
    sshd_config: Path
    host_key: Path
    pid_file: Path
    log_file: Path

    def __str__(self) -> str:
        return self.name


HostRef = Union[TestbedHost, str]


class Testbed:
    """N real sshd hosts; a context manager (``up()`` on enter, ``down()`` on exit).

    ``Testbed(name)`` without ``up()`` can still ``down()`` or ``load()`` a testbed made by another process
    (for instance by ``sshfleet testbed up``).
    """

    __test__ = False

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        n: int = 0,
        shared_home: bool = False,
        state_dir: Union[str, os.PathLike[str], None] = None,
    ) -> None:
        if not (0 < len(name) <= MAX_NAME and name.isascii() and name.isalnum() and name[0].isalpha()):
            raise UsageError(f"testbed name must be 1-{MAX_NAME} letters/digits starting with a letter: {name!r}")
        if name != name.lower():
            raise UsageError(f"testbed name must be lower case: {name!r}")
        if not 0 <= n <= MAX_HOSTS:
            raise UsageError(f"a testbed has 1-{MAX_HOSTS} hosts, not {n}")
        self.name = name
        self.n = n
        self.shared_home = shared_home
        self.state_dir = Path(state_dir if state_dir is not None else f"/tmp/sshfleet-testbed-{name}").absolute()
        if any(c.isspace() for c in str(self.state_dir)):
            raise UsageError(f"testbed state directory must not contain whitespace: {self.state_dir}")
        self.subnet: Optional[int] = None
        self._hosts: list[TestbedHost] = []

    # ----------------------------------------------------------------- paths and views
    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.state_dir / "inventory.ini"

    @property
    def hosts_file(self) -> Path:
        return self.state_dir / "hosts.txt"

    @property
    def client_key(self) -> Path:
        return self.state_dir / "client_key"

    @property
    def authorized_keys(self) -> Path:
        return self.state_dir / "authorized_keys"

    @property
    def controller_address(self) -> str:
        return f"{system.subnet_prefix(self._require_subnet())}.1"

    @property
    def hosts(self) -> list[TestbedHost]:
        """The hosts, in order; known once ``up()`` or ``load()`` has run."""
        self._require_subnet()
        return list(self._hosts)

    def host(self, ref: HostRef) -> TestbedHost:
        """A host by TestbedHost, name or address."""
        if isinstance(ref, TestbedHost):
            ref = ref.name
        for h in self.hosts:
            if ref in (h.name, h.address):
                return h
        raise UsageError(f"testbed {self.name} has no host {ref!r}")

    def ssh_options(self, user: str = "root") -> SshOptions:
        """SshOptions reaching this testbed's hosts with its own config, known_hosts and key, nothing else."""
        return SshOptions(
            ssh_config=str(self.ssh_config),
            known_hosts=str(self.known_hosts),
            identity_files=(str(self.client_key),),
            allow_agent=False,
            look_for_keys=False,
            user=user,
        )

    def _require_subnet(self) -> int:
        if self.subnet is None:
            raise TestbedError(f"testbed {self.name} is not up (call up() or load())")
        return self.subnet

    def _layout(self, index: int) -> TestbedHost:
        name = f"node{index:02d}"
        hdir = self.state_dir / "hosts" / name
        if self.shared_home:
            caches = {u: self.state_dir / "shared" / f"{u}-cache" for u in files.LOGIN_USERS}
        else:
            caches = {u: hdir / f"{u}-cache" for u in files.LOGIN_USERS}
        return TestbedHost(
            name=name,
            address=f"{system.subnet_prefix(self._require_subnet())}.{HOST_OFFSET + index}",
            netns=f"{self.name}-{name}",
            index=index,
            veth=f"{self.name}-v{index:02d}",
            dir=hdir,
            tmp_dir=hdir / "tmp",
            cache_dirs=caches,
            sshd_config=hdir / "sshd_config",
            host_key=hdir / "ssh_host_ed25519_key",
            pid_file=hdir / "sshd.pid",
            log_file=hdir / "sshd.log",
        )

    def _host_layout(self, host: TestbedHost) -> HostLayout:
        mounts = tuple((u, host.cache_dirs[u], _home(u) / ".cache") for u in files.LOGIN_USERS)
        return HostLayout(
            name=host.name,
            address=host.address,
            netns=host.netns,
            sshd_config=host.sshd_config,
            host_key=host.host_key,
            pid_file=host.pid_file,
            log_file=host.log_file,
            tmp_dir=host.tmp_dir,
            cache_mounts=mounts,
        )

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def load(cls, name: str = DEFAULT_NAME, state_dir: Union[str, os.PathLike[str], None] = None) -> Testbed:
        """Attach to a testbed that is up (made by this or another process); TestbedError if there is none."""
        bed = cls(name, state_dir=state_dir)
        path = bed.state_dir / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TestbedError(f"no testbed {name!r} (no {path})") from None
        except (OSError, ValueError) as exc:
            raise TestbedError(f"cannot read {path}: {exc}") from exc
        bed.n = int(state["n"])
        bed.shared_home = bool(state["shared_home"])
        bed.subnet = int(state["subnet"])
        bed._hosts = [bed._layout(i) for i in range(1, bed.n + 1)]
        return bed

    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.down()

    def up(self, timeout: float = 30.0) -> Testbed:
        """Build the testbed and return once every sshd listens; on any failure, tear down what was built.

        Raises UsageError when not root or when a testbed of this name is already up, TestbedError when the
        machine cannot build it (the message carries the failing command or the sshd log tail).
        """
        system.require_root()
        if self.n < 1:
            raise UsageError("Testbed.up() needs n >= 1 hosts")
        if (self.state_dir / STATE_FILE).exists():
            raise UsageError(f"testbed {self.name!r} is already up ({self.state_dir}); take it down first")
        deadline = time.monotonic() + timeout
        system.ensure_sshd()
        fleet = system.ensure_user(LOGIN_USER)
        fleet_cache = Path(fleet.pw_dir) / ".cache"
        if not fleet_cache.exists():
            fleet_cache.mkdir(mode=0o700)
            os.chown(fleet_cache, fleet.pw_uid, fleet.pw_gid)
        Path("/root/.cache").mkdir(mode=0o700, exist_ok=True)
        # A half-built testbed of the same name (a crashed up) would make every `ip ... add` fail.
        self._remove_network()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        try:
            with system.machine_lock():
                self.subnet = system.pick_subnet(self.name)
                self._write_state()
                self._make_bridge()
            self._hosts = [self._layout(i) for i in range(1, self.n + 1)]
            self._make_files(fleet.pw_uid, fleet.pw_gid)
            self._make_namespaces()
            self._start_all(deadline)
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        return self

    def down(self, timeout: float = 10.0) -> None:
        """Remove every namespace, link, process and file of this testbed.

        Idempotent, and works on a fresh ``Testbed(name)`` too: it finds what to remove by name.
        """
        system.require_root()
        self._remove_network(timeout)
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.subnet = None
        self._hosts = []

    def _remove_network(self, timeout: float = 10.0) -> None:
        prefix = f"{self.name}-node"
        namespaces = [ns for ns in system.list_netns() if ns.startswith(prefix) and ns[len(prefix) :].isdigit()]
        inodes = {ino for ns in namespaces if (ino := system.netns_inode(ns)) is not None}
        survivors = system.kill_netns_processes(inodes, time.monotonic() + timeout)
        if survivors:
            raise TestbedError(f"processes survive SIGKILL in testbed {self.name}: {survivors}")
        for ns in namespaces:
            system.command(["ip", "netns", "delete", ns], check=False)
        links = json.loads(system.command(["ip", "-j", "link", "show"]).stdout or "[]")
        for link in links:
            ifname = link.get("ifname", "")
            if ifname == self.bridge or (
                ifname.startswith(f"{self.name}-v") and ifname[len(self.name) + 2 :].isdigit()
            ):
                system.command(["ip", "link", "delete", ifname], check=False)
        left = [ns for ns in system.list_netns() if ns in namespaces]
        if left:
            raise TestbedError(f"cannot delete network namespaces {left}")

    def _write_state(self) -> None:
        state = {"name": self.name, "n": self.n, "shared_home": self.shared_home, "subnet": self.subnet}
        files.write_private(self.state_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")

    def _make_bridge(self) -> None:
        system.command(["ip", "link", "add", self.bridge, "type", "bridge"])
        system.command(["ip", "addr", "add", f"{self.controller_address}/24", "dev", self.bridge])
        system.command(["ip", "link", "set", self.bridge, "up"])

    def _make_files(self, fleet_uid: int, fleet_gid: int) -> None:
        keys = [(self.client_key, f"sshfleet-testbed-{self.name}-client")]
        keys += [(h.host_key, f"sshfleet-testbed-{self.name}-{h.name}") for h in self._hosts]
        for h in self._hosts:
            h.dir.mkdir(parents=True, exist_ok=True)
        files.generate_keys(keys)
        files.write_private(self.authorized_keys, files.public_key(self.client_key) + "\n")
        inside = files.state_inside_tmp(self.state_dir)
        for h in self._hosts:
            h.tmp_dir.mkdir(exist_ok=True)
            os.chmod(h.tmp_dir, 0o1777)
            if inside is not None:
                (h.tmp_dir / inside).mkdir(parents=True, exist_ok=True)
            for user, cache in h.cache_dirs.items():
                cache.mkdir(parents=True, exist_ok=True, mode=0o700)
                if user != "root":
                    os.chown(cache, fleet_uid, fleet_gid)
            layout = self._host_layout(h)
            files.write_private(h.sshd_config, files.sshd_config_text(layout, self.authorized_keys))
        self._write_client_files()
        layouts = [self._host_layout(h) for h in self._hosts]
        files.write_private(self.state_dir / files.ETC_HOSTS, files.etc_hosts_text(layouts), mode=0o644)

    def _write_client_files(self) -> None:
        layouts = [self._host_layout(h) for h in self._hosts]
        files.write_private(self.ssh_config, files.ssh_config_text(layouts, self.client_key, self.known_hosts))
        files.write_private(self.known_hosts, files.known_hosts_text(layouts))
        files.write_private(self.inventory, files.inventory_text(layouts, self.client_key, self.ssh_config))
        files.write_private(self.hosts_file, "".join(f"{h.name}\n" for h in self._hosts))

    def _make_namespaces(self) -> None:
        # `ip -batch` per namespace rather than one `ip` per step: dozens of runs would dominate a small up().
        lines = []
        for h in self._hosts:
            lines += [
                f"netns add {h.netns}",
                f"link add {h.veth} type veth peer name eth0 netns {h.netns}",
                f"link set {h.veth} master {self.bridge} up",
            ]
        system.command(["ip", "-batch", "-"], input="\n".join(lines) + "\n")
        inner = "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\n"
        with ThreadPoolExecutor(max_workers=min(16, len(self._hosts))) as pool:
            list(
                pool.map(
                    lambda h: system.command(["ip", "-n", h.netns, "-batch", "-"], input=inner.format(h.address)),
                    self._hosts,
                )
            )

    # ----------------------------------------------------------------- sshd
    def _start_all(self, deadline: float) -> None:
        with ThreadPoolExecutor(max_workers=min(32, len(self._hosts))) as pool:
            list(pool.map(lambda h: self._start_sshd(h, deadline), self._hosts))

    def _start_sshd(self, host: TestbedHost, deadline: float) -> int:
        host.pid_file.unlink(missing_ok=True)
        argv = files.sshd_command(self._host_layout(host), self.state_dir)
        # sshd daemonizes: the process we start exits at once and the listener is reparented to init, so it
        # outlives a CLI `up` and never becomes our zombie.
        proc = system.command(argv, check=False, timeout=max(1.0, deadline - time.monotonic()))
        if proc.returncode != 0:
            raise TestbedError(f"sshd of {host.name} did not start: {proc.stderr.strip()}{self._log_tail(host)}")
        while time.monotonic() < deadline:
            pid = self.sshd_pid(host)
            if pid is not None:
                return pid  # the pid file is written after the listening socket is bound
            time.sleep(0.01)
        raise TestbedError(f"sshd of {host.name} did not start listening in time{self._log_tail(host)}")

    def _log_tail(self, host: TestbedHost, lines: int = 10) -> str:
        try:
            text = host.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        tail = text.strip().splitlines()[-lines:]
        return ("\n  sshd log: " + "\n  ".join(tail)) if tail else ""

    def sshd_pid(self, ref: HostRef) -> Optional[int]:
        """PID of the host's sshd listener when it runs (in the host's namespace), else None."""
        host = self.host(ref)
        pid = system.read_pid_file(str(host.pid_file))
        if pid is None or not system.pid_alive(pid):
            return None
        try:
            same = os.stat(f"/proc/{pid}/ns/net").st_ino == system.netns_inode(host.netns)
        except OSError:
            return None
        return pid if same else None

    def start_sshd(self, ref: HostRef, timeout: float = 10.0) -> None:
        """Start the host's sshd (after ``kill_sshd``); no-op when it already runs."""
        host = self.host(ref)
        if self.sshd_pid(host) is None:
            self._start_sshd(host, time.monotonic() + timeout)

    def kill_sshd(self, ref: HostRef, timeout: float = 10.0) -> None:
        """Stop the host's sshd listener (SIGTERM); sessions already open keep their own sshd processes."""
        host = self.host(ref)
        pid = self.sshd_pid(host)
        if pid is None:
            return
        system.kill_pids([pid], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while system.pid_alive(pid):
            if time.monotonic() > deadline + 5:
                raise TestbedError(f"sshd of {host.name} (pid {pid}) survives SIGKILL")
            if time.monotonic() > deadline:
                system.kill_pids([pid])
            time.sleep(0.01)
        host.pid_file.unlink(missing_ok=True)

    def regenerate_host_key(self, ref: HostRef) -> None:
        """Give the host a new host key and restart its sshd; known_hosts keeps the old one (on purpose)."""
        host = self.host(ref)
        self.kill_sshd(host)
        files.generate_keys([(host.host_key, f"sshfleet-testbed-{self.name}-{host.name}-regenerated")])
        self.start_sshd(host)

    def answers(self, ref: HostRef, timeout: float = 2.0) -> bool:
        """True when the host's port 22 answers with an SSH banner."""
        host = self.host(ref)
        try:
            with socket.create_connection((host.address, 22), timeout=timeout) as sock:
                sock.settimeout(timeout)
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    # ----------------------------------------------------------------- commands inside a host
    def run(
        self,
        ref: HostRef,
        argv: Union[Sequence[str], str],
        user: Optional[str] = None,
        check: bool = True,
        timeout: float = 60.0,
        input: Optional[str] = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (a string runs under ``sh -c``) inside the host, as root or ``user``, without SSH.

        Enters the namespaces of the host's sshd (network, mounts, hostname), so the command sees what an SSH
        session sees; when sshd is down, an identical fresh set of namespaces is built instead. Raises
        subprocess.CalledProcessError when ``check`` and the command fails, TimeoutExpired past ``timeout``.
        """
        host = self.host(ref)
        cmd = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        if user is not None and user != "root":
            cmd = ["runuser", "-u", user, "--", *cmd]
        pid = self.sshd_pid(host)
        if pid is not None:
            full = ["nsenter", "-t", str(pid), "-n", "-m", "-u", "--", *cmd]
        else:
            full = files.host_command(self._host_layout(host), self.state_dir, cmd)
        env = {
            "PATH": system.ROOT_PATH,
            "LANG": "C.UTF-8",
            "HOME": "/root",
            "USER": "root",
            "LOGNAME": "root",
        }
        return subprocess.run(
            full, input=input, capture_output=True, text=True, timeout=timeout, env=env, check=check, cwd="/"
        )

    # ----------------------------------------------------------------- faults
    def link_down(self, ref: HostRef) -> None:
        """Cut the host off like a pulled cable far away: packets vanish, connects and sessions time out.

        The bridge port goes down, and a permanent neighbour entry keeps the controller sending into the void
        instead of failing ARP after ~3 s with "No route to host" (which is a different fault).
        """
        host = self.host(ref)
        links = json.loads(system.command(["ip", "-n", host.netns, "-j", "link", "show", "eth0"]).stdout)
        mac = links[0]["address"]
        system.command(["ip", "neigh", "replace", host.address, "lladdr", mac, "dev", self.bridge, "nud", "permanent"])
        system.command(["ip", "link", "set", host.veth, "down"])

    def link_up(self, ref: HostRef) -> None:
        host = self.host(ref)
        system.command(["ip", "link", "set", host.veth, "up"])
        system.command(["ip", "neigh", "del", host.address, "dev", self.bridge], check=False)

    def limit_rate(self, ref: HostRef, rate: str = "1mbit", burst: str = "16kb", latency: str = "500ms") -> None:
        """Shape both directions of the host's link with a token bucket (``tc ... tbf``)."""
        host = self.host(ref)
        tbf = ["root", "tbf", "rate", rate, "burst", burst, "latency", latency]
        system.command(["tc", "qdisc", "replace", "dev", host.veth, *tbf])
        system.command(["ip", "netns", "exec", host.netns, "tc", "qdisc", "replace", "dev", "eth0", *tbf])

    def clear_rate(self, ref: HostRef) -> None:
        host = self.host(ref)
        system.command(["tc", "qdisc", "del", "dev", host.veth, "root"], check=False)
        system.command(["ip", "netns", "exec", host.netns, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)

    # ----------------------------------------------------------------- sudo
    def sudo_rule(
        self, rule: str = "ALL=(ALL) NOPASSWD: ALL", user: str = LOGIN_USER, password: Optional[str] = None
    ) -> contextlib.AbstractContextManager[str]:
        """A sudoers rule for ``user`` (default the login user ``fleet``) while the ``with`` block runs, and with
        ``password`` a login password for sudo to ask for: for tests of ``become``. The rule holds on every host
        (they share the machine's /etc); see ``system.sudo_rule`` for how it is checked and removed."""
        return system.sudo_rule(user, rule, password)

    # ----------------------------------------------------------------- leftovers
    def session_dirs(self, ref: HostRef) -> dict[str, Path]:
        """Controller-side paths of ``~/.cache/sshfleet/sessions`` as the host sees it, per login user."""
        host = self.host(ref)
        return {user: cache / "sshfleet" / "sessions" for user, cache in host.cache_dirs.items()}

    def leftovers(self, ref: HostRef) -> list[str]:
        """What is left on the host besides its sshd listener: processes in its network namespace and
        entries under ``~/.cache/sshfleet/sessions/`` of root and fleet. Empty when the host is clean."""
        return self._scan([self.host(ref)])[self.host(ref).name]

    def wait_clean(self, timeout: float = 10.0) -> dict[str, list[str]]:
        """Poll until every host is clean or ``timeout`` passes; returns {host: leftovers} of dirty hosts."""
        deadline = time.monotonic() + timeout
        while True:
            dirty = {name: left for name, left in self._scan(self.hosts).items() if left}
            if not dirty or time.monotonic() >= deadline:
                return dirty
            time.sleep(0.05)

    def clean(self, refs: Optional[Sequence[HostRef]] = None) -> None:
        """Kill leftover processes and remove session entries: one dirty test must not taint the next."""
        hosts = [self.host(r) for r in refs] if refs is not None else self.hosts
        listeners = {self.sshd_pid(h) for h in hosts}
        inodes = {ino for h in hosts if (ino := system.netns_inode(h.netns)) is not None}
        for pids in system.pids_by_netns(inodes).values():
            system.kill_pids([p for p in pids if p not in listeners])
        for h in hosts:
            for sessions in self.session_dirs(h).values():
                if sessions.is_dir():
                    for entry in sessions.iterdir():
                        if entry.is_dir() and not entry.is_symlink():
                            shutil.rmtree(entry, ignore_errors=True)
                        else:
                            entry.unlink(missing_ok=True)

    def _scan(self, hosts: Sequence[TestbedHost]) -> dict[str, list[str]]:
        by_inode = {ino: h for h in hosts if (ino := system.netns_inode(h.netns)) is not None}
        pids = system.pids_by_netns(set(by_inode))
        result: dict[str, list[str]] = {h.name: [] for h in hosts}
        for ino, host in by_inode.items():
            listener = self.sshd_pid(host)
            result[host.name] += [system.describe_pid(p) for p in pids[ino] if p != listener]
        for host in hosts:
            for user, sessions in self.session_dirs(host).items():
                with contextlib.suppress(OSError):
                    for entry in sorted(sessions.iterdir()):
                        result[host.name].append(f"{user}'s session entry {entry}")
        return result


def _home(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)
