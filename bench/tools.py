"""One adapter per tool, all with the same small interface, used inside a worker process (bench.worker).

Each adapter does what a user of that tool would write, with the tool's defaults, pointed at the testbed's
ssh_config / known_hosts / key (host keys checked strictly wherever the tool can check them):

- ``cold(hosts)``: connect + one trivial remote Python action + disconnect, timed as a whole.
- ``open(hosts)`` / ``round()`` / ``close()``: keep connections open and run one trivial call on every host
  per ``round()``; a round raises unless every host answered.
- ``stream(nbytes)`` (after ``open`` on one host): read ``nbytes`` from the host, return the bytes read
  (the raw-SSH baselines it is compared with are in bench/baselines.py).

``Env`` describes the fleet: ssh_config, known_hosts, client keys, and the hosts (alias + address).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Optional

PY_PRINT = "python3 -c 'print(1)'"


@dataclass
class Env:
    ssh_config: str
    known_hosts: str
    client_keys: list[str]
    hosts: list[dict[str, str]]  # [{"name": alias in ssh_config, "address": ip}]
    tmp: str  # scratch directory owned by the run
    user: str = "fleet"  # login user on the hosts, given explicitly to every tool (beats ssh_config's User)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Env:
        return cls(**d)

    def names(self, n: int) -> list[str]:
        if n > len(self.hosts):
            raise ValueError(f"asked for {n} hosts, the testbed has {len(self.hosts)}")
        return [h["name"] for h in self.hosts[:n]]

    def addresses(self, n: int) -> list[str]:
        return [h["address"] for h in self.hosts[:n]]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


class Tool:
    """Base: subclasses override what they support; the rest says so instead of failing obscurely."""

    name = "?"
    dist = ""

    def __init__(self, env: Env) -> None:
        self.env = env

    def version(self) -> str:
        return _version(self.dist) if self.dist else "?"

    def info(self) -> dict[str, Any]:
        """Extra facts worth recording (e.g. the negotiated cipher), after open()."""
        return {}

    def cold(self, n: int) -> dict[str, Any]:
        raise NotImplementedError(f"{self.name} has no cold start")

    def open(self, n: int) -> None:
        raise NotImplementedError(f"{self.name} has no warm fan-out")

    def round(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def stream(self, nbytes: int) -> int:
        raise NotImplementedError(f"{self.name} has no streaming test")


# --------------------------------------------------------------------------------------------- sshfleet


class Sshfleet(Tool):
    """``SysinfoAgent(hosts)``; ``Uname()`` is the trivial call, ``Count(n, 64 KiB)`` the stream."""

    name = "sshfleet"
    dist = "sshfleet"
    CHUNK = 64 * 1024

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        from sshfleet._options import SshOptions

        self.options = SshOptions(
            ssh_config=env.ssh_config,
            known_hosts=env.known_hosts,
            identity_files=tuple(env.client_keys),
            allow_agent=False,
            look_for_keys=False,
            user=env.user,
        )
        self.agent: Any = None

    def _agent(self, hosts: list[str]) -> Any:
        from agents.sysinfo import SysinfoAgent

        return SysinfoAgent(hosts, ssh_options=self.options)

    def cold(self, n: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        agent = self._agent(self.env.names(n))
        t1 = time.perf_counter()
        try:
            reply = agent.Uname()
            t2 = time.perf_counter()
        finally:
            agent.close()
        t3 = time.perf_counter()
        if not agent.started.success() or not reply.success():
            raise RuntimeError("not every host answered:\n" + (agent.started.status() + "\n" + reply.status()))
        started = [agent.started[h] for h in agent.hosts]
        return {
            "seconds": t3 - t0,
            "phases": {"start": t1 - t0, "first_call": t2 - t1, "close": t3 - t2},
            "round_trips": [s["round_trips"] for s in started],
            "shipped": sorted({name for s in started for name in s["shipped"]}),
            "bootstrap_seconds": [s["seconds"] for s in started],
        }

    def open(self, n: int) -> None:
        self.agent = self._agent(self.env.names(n))
        if not self.agent.started.success():
            status = self.agent.started.status()
            self.close()
            raise RuntimeError("agent did not start everywhere:\n" + status)

    def info(self) -> dict[str, Any]:
        if self.agent is None:
            return {}
        conn = self.agent.fleet.connection(self.agent.hosts[0])
        return {"cipher": getattr(conn, "cipher", None)}  # the paramiko transport's; the cipher is worth recording

    def started(self) -> dict[str, Any]:
        return {h: dict(self.agent.started[h]) for h in self.agent.hosts}

    def round(self) -> None:
        reply = self.agent.Uname()
        if not reply.success():
            raise RuntimeError(reply.status())

    def close(self) -> None:
        if self.agent is not None:
            agent, self.agent = self.agent, None
            agent.close()

    def stream(self, nbytes: int) -> int:
        total = 0
        for host, chunk in self.agent.Count(n=nbytes // self.CHUNK, size=self.CHUNK):
            if isinstance(chunk, Exception):
                raise RuntimeError(f"{host}: {chunk}")
            total += len(chunk.data)
        return total


class SshfleetOpenssh(Sshfleet):
    """The same agent over sshfleet's OpenSSH transport (``transport="openssh"``: a ControlMaster per host
    forwards a Unix socket, so no Python sits in the RPC data path)."""

    name = "sshfleet-openssh"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.options = self.options.replace(transport="openssh")

    def info(self) -> dict[str, Any]:
        return {"cipher": "chacha20-poly1305@openssh.com (OpenSSH's default)", "transport": "openssh"}


# --------------------------------------------------------------------------------------------- Fabric


class Fabric(Tool):
    """``ThreadingGroup(...).run(cmd)``: a thread per host per run, a new session channel per command."""

    name = "fabric"
    dist = "fabric"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.group: Any = None

    def _group(self, hosts: list[str]) -> Any:
        import paramiko
        from fabric import Config, ThreadingGroup

        config = Config(runtime_ssh_path=self.env.ssh_config)  # only this file, not ~/.ssh/config
        group = ThreadingGroup(
            *hosts,
            user=self.env.user,
            config=config,
            connect_kwargs={"key_filename": self.env.client_keys, "allow_agent": False, "look_for_keys": False},
        )
        for conn in group:
            # Fabric auto-adds unknown host keys; be as strict as the other tools.
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            conn.client.load_host_keys(self.env.known_hosts)
        return group

    @staticmethod
    def _run(group: Any, command: str, expect: Optional[str]) -> None:
        results = group.run(command, hide=True, in_stream=False, warn=False)
        for conn, result in results.items():
            if result.exited != 0 or (expect is not None and result.stdout != expect):
                raise RuntimeError(f"{conn.host}: exit {result.exited}, stdout {result.stdout!r}")

    def cold(self, n: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        group = self._group(self.env.names(n))
        try:
            self._run(group, PY_PRINT, "1\n")
        finally:
            group.close()
        return {"seconds": time.perf_counter() - t0}

    def open(self, n: int) -> None:
        self.group = self._group(self.env.names(n))
        self._run(self.group, "true", None)

    def round(self) -> None:
        self._run(self.group, "true", None)

    def close(self) -> None:
        if self.group is not None:
            group, self.group = self.group, None
            group.close()

    def info(self) -> dict[str, Any]:
        if self.group is None:
            return {}
        conn = next(iter(self.group))
        return {"cipher": conn.transport.local_cipher if conn.transport else None}


# --------------------------------------------------------------------------------------------- parallel-ssh


class ParallelSsh(Tool):
    """``ParallelSSHClient(addresses).run_command(cmd)`` (libssh2 + gevent).

    parallel-ssh reads no ssh_config and checks no host keys at all: it gets the addresses and the key.
    """

    name = "parallel-ssh"
    dist = "parallel-ssh"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.client: Any = None

    def _client(self, n: int) -> Any:
        from pssh.clients import ParallelSSHClient

        return ParallelSSHClient(
            self.env.addresses(n),
            user=self.env.user,
            pkey=self.env.client_keys[0],
            num_retries=1,
            timeout=60,
            pool_size=max(10, n),
            allow_agent=False,
            identity_auth=False,
        )

    @staticmethod
    def _run(client: Any, command: str, expect: Optional[str]) -> None:
        output = client.run_command(command, stop_on_errors=True)
        client.join(output)
        for host_out in output:
            stdout = "".join(line + "\n" for line in host_out.stdout)
            if host_out.exit_code != 0 or (expect is not None and stdout != expect):
                raise RuntimeError(f"{host_out.host}: exit {host_out.exit_code}, stdout {stdout!r}")

    @staticmethod
    def _disconnect(client: Any) -> None:
        for host_client in list(client._host_clients.values()):
            host_client.disconnect()
        client._host_clients.clear()

    def cold(self, n: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        client = self._client(n)
        try:
            self._run(client, PY_PRINT, "1\n")
        finally:
            self._disconnect(client)
        return {"seconds": time.perf_counter() - t0}

    def open(self, n: int) -> None:
        self.client = self._client(n)
        self._run(self.client, "true", None)

    def round(self) -> None:
        self._run(self.client, "true", None)

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            self._disconnect(client)


# --------------------------------------------------------------------------------------------- asyncssh


class AsyncSsh(Tool):
    """``asyncssh.connect()`` per host, ``conn.run(cmd)``, gathered on one event loop."""

    name = "asyncssh"
    dist = "asyncssh"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.loop = asyncio.new_event_loop()
        self.conns: list[Any] = []

    async def _connect(self, host: str) -> Any:
        import asyncssh

        return await asyncssh.connect(
            host,
            config=[self.env.ssh_config],
            known_hosts=self.env.known_hosts,
            client_keys=self.env.client_keys,
            agent_path=None,
            username=self.env.user,
        )

    @staticmethod
    async def _run(conn: Any, command: str, expect: Optional[str]) -> None:
        result = await conn.run(command, check=True)
        if expect is not None and result.stdout != expect:
            raise RuntimeError(f"stdout {result.stdout!r}")

    async def _cold(self, hosts: list[str]) -> None:
        async def one(host: str) -> None:
            conn = await self._connect(host)
            try:
                await self._run(conn, PY_PRINT, "1\n")
            finally:
                conn.close()
                await conn.wait_closed()

        await asyncio.gather(*(one(h) for h in hosts))

    def cold(self, n: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.loop.run_until_complete(self._cold(self.env.names(n)))
        return {"seconds": time.perf_counter() - t0}

    def open(self, n: int) -> None:
        async def connect_all() -> list[Any]:
            return list(await asyncio.gather(*(self._connect(h) for h in self.env.names(n))))

        self.conns = self.loop.run_until_complete(connect_all())
        self.round()

    def round(self) -> None:
        async def fan_out() -> None:
            await asyncio.gather(*(self._run(c, "true", None) for c in self.conns))

        self.loop.run_until_complete(fan_out())

    def close(self) -> None:
        async def close_all(conns: list[Any]) -> None:
            for conn in conns:
                conn.close()
            await asyncio.gather(*(c.wait_closed() for c in conns))

        conns, self.conns = self.conns, []
        self.loop.run_until_complete(close_all(conns))


# --------------------------------------------------------------------------------------------- Mitogen


class Mitogen(Tool):
    """A context per host with ``router.ssh()`` (OpenSSH client underneath), ``call_function`` on each.

    ``router.ssh()`` blocks until the host's context is up, so hosts connect from a thread pool (what a user
    wanting a parallel start writes), at most 64 at once like sshfleet's ``forks``: 128 bootstraps at once on
    2 cores run into Mitogen's connect timeout. Mitogen's defaults stay, including ssh compression.
    """

    FORKS = 64

    name = "mitogen"
    dist = "mitogen"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.broker: Any = None
        self.router: Any = None
        self.contexts: list[Any] = []

    def _connect(self, hosts: list[str]) -> tuple[Any, Any, list[Any]]:
        import mitogen.master

        broker = mitogen.master.Broker()
        router = mitogen.master.Router(broker)
        try:
            with ThreadPoolExecutor(max_workers=min(len(hosts), self.FORKS)) as pool:
                contexts = list(
                    pool.map(
                        lambda h: router.ssh(
                            hostname=h,
                            username=self.env.user,
                            python_path=["python3"],
                            ssh_args=["-F", self.env.ssh_config],
                            check_host_keys="enforce",
                            connect_timeout=120,
                        ),
                        hosts,
                    )
                )
        except BaseException:
            broker.shutdown()
            broker.join()
            raise
        return broker, router, contexts

    @staticmethod
    def _call_all(contexts: list[Any]) -> None:
        from bench import remote_fn

        receivers = [ctx.call_async(remote_fn.answer) for ctx in contexts]
        for receiver in receivers:
            if receiver.get().unpickle() != 1:
                raise RuntimeError("wrong answer")

    def cold(self, n: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        broker, _, contexts = self._connect(self.env.names(n))
        try:
            self._call_all(contexts)
        finally:
            broker.shutdown()
            broker.join()
        return {"seconds": time.perf_counter() - t0}

    def open(self, n: int) -> None:
        self.broker, self.router, self.contexts = self._connect(self.env.names(n))
        self._call_all(self.contexts)

    def round(self) -> None:
        self._call_all(self.contexts)

    def close(self) -> None:
        if self.broker is not None:
            broker, self.broker, self.contexts = self.broker, None, []
            broker.shutdown()
            broker.join()


# --------------------------------------------------------------------------------------------- Ansible


class Ansible(Tool):
    """``ansible all -i INV -m ping --forks N``: a whole CLI run, Python start-up and imports included.

    Host keys are checked (testbed known_hosts through ``-F ssh_config``). Each run gets a fresh
    ControlPath directory, and the ControlPersist masters it leaves are stopped after the clock stops, so
    no run reuses an earlier run's connections.
    """

    name = "ansible"
    dist = "ansible-core"

    def _inventory(self, n: int) -> str:
        path = os.path.join(self.env.tmp, f"ansible-{n}.ini")
        lines = ["[all]"]
        # No ansible_host: ssh must see the alias so that the ssh_config block (and its known_hosts) applies.
        lines += [h["name"] for h in self.env.hosts[:n]]
        lines += [
            "",
            "[all:vars]",
            f"ansible_user={self.env.user}",
            f"ansible_ssh_private_key_file={self.env.client_keys[0]}",
            f"ansible_ssh_common_args=-F {self.env.ssh_config} -o UserKnownHostsFile={self.env.known_hosts}",
        ]
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def cold(self, n: int) -> dict[str, Any]:
        inventory = self._inventory(n)
        run_dir = tempfile.mkdtemp(prefix="ansible-", dir=self.env.tmp)
        empty_cfg = os.path.join(run_dir, "ansible.cfg")
        open(empty_cfg, "w").close()
        env = dict(
            os.environ,
            ANSIBLE_CONFIG=empty_cfg,  # no ansible.cfg from the working directory or $HOME
            ANSIBLE_HOST_KEY_CHECKING="True",
            ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(run_dir, "cp"),
            ANSIBLE_LOCAL_TEMP=os.path.join(run_dir, "tmp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_GALAXY_DISABLE_GPG_VERIFY="1",
        )
        ansible = shutil.which("ansible", path=os.path.dirname(sys.executable)) or "ansible"
        argv = [ansible, "all", "-i", inventory, "-m", "ping", "--forks", str(n)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
            seconds = time.perf_counter() - t0
        finally:
            self._stop_masters(os.path.join(run_dir, "cp"))
            shutil.rmtree(run_dir, ignore_errors=True)
        ok = proc.stdout.count("SUCCESS")
        if proc.returncode != 0 or ok != n:
            raise RuntimeError(f"ansible exit {proc.returncode}, {ok}/{n} SUCCESS:\n{proc.stdout[-2000:]}")
        return {"seconds": seconds}

    def _stop_masters(self, cp_dir: str) -> None:
        if not os.path.isdir(cp_dir):
            return
        for sock in os.listdir(cp_dir):
            subprocess.run(
                ["ssh", "-F", self.env.ssh_config, "-o", f"ControlPath={os.path.join(cp_dir, sock)}",
                 "-O", "exit", "unused"],
                capture_output=True, timeout=10, check=False,
            )  # fmt: skip


# The streaming baselines live in bench/baselines.py; bench/worker.py registers them with these.
TOOLS: dict[str, type[Tool]] = {
    t.name: t
    for t in (
        Sshfleet,
        SshfleetOpenssh,
        Fabric,
        ParallelSsh,
        AsyncSsh,
        Mitogen,
        Ansible,
    )
}
