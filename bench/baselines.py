"""The streaming baselines: what sshfleet's single-host throughput is compared with (used by bench.worker).

``stream(nbytes)`` (after ``open`` on one host) reads ``nbytes`` from the host and returns the bytes read.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from typing import Any, Optional

from bench.tools import Env, Sshfleet, Tool


class Paramiko(Tool):
    """A raw paramiko ``SSHClient`` with its defaults: exec ``head -c N /dev/zero``, read the channel."""

    name = "paramiko"
    dist = "paramiko"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.client: Any = None

    def open(self, n: int) -> None:
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(self.env.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.env.addresses(1)[0],
            username=self.env.user,
            key_filename=self.env.client_keys,
            allow_agent=False,
            look_for_keys=False,
        )
        self.client = client

    def _transport(self) -> Any:
        return self.client.get_transport()

    def info(self) -> dict[str, Any]:
        t = self._transport()
        return {"cipher": t.local_cipher, "mac": t.local_mac} if t else {}

    def stream(self, nbytes: int) -> int:
        chan = self._transport().open_session()
        return _read_all(chan, nbytes)

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.close()


class ParamikoSeam(Paramiko):
    """paramiko through sshfleet's SSH seam: its cipher order (AES-GCM first) and 4 MiB window."""

    name = "paramiko-seam"

    def open(self, n: int) -> None:
        from sshfleet import _ssh
        from sshfleet._options import HostSpec

        self.conn = _ssh.connect(HostSpec(self.env.names(1)[0]), Sshfleet(self.env).options)
        self.client = self.conn

    def _transport(self) -> Any:
        return self.conn._transport

    def stream(self, nbytes: int) -> int:
        chan = self.conn.exec(f"head -c {nbytes} /dev/zero", timeout=30)
        return _read_all(chan, nbytes, started=True)


def _read_all(chan: Any, nbytes: int, started: bool = False) -> int:
    if not started:
        chan.exec_command(f"head -c {nbytes} /dev/zero")
    chan.settimeout(60)
    total = 0
    while True:
        data = chan.recv(1 << 20)
        if not data:
            break
        total += len(data)
    chan.close()
    return total


class OpenSsh(Tool):
    """The OpenSSH client: ``ssh -F cfg host 'head -c N /dev/zero' > /dev/null`` over a ControlMaster opened
    beforehand, so the timed part is the transfer, not the handshake."""

    name = "openssh"
    dist = ""

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.master: Optional[subprocess.Popen[bytes]] = None
        self.control = ""

    def version(self) -> str:
        proc = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
        return (proc.stderr or proc.stdout).strip()

    def _base(self) -> list[str]:
        return ["ssh", "-F", self.env.ssh_config, "-l", self.env.user, "-o", f"ControlPath={self.control}"]

    def open(self, n: int) -> None:
        self.control = tempfile.mktemp(prefix="cm-", dir=self.env.tmp)
        host = self.env.names(1)[0]
        self.master = subprocess.Popen(
            [*self._base(), "-o", "ControlMaster=yes", "-N", host],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(self.control):
            if self.master.poll() is not None or time.monotonic() > deadline:
                err = self.master.stderr.read().decode() if self.master.stderr else ""
                self.close()
                raise RuntimeError(f"ssh ControlMaster did not start: {err}")
            time.sleep(0.01)

    def info(self) -> dict[str, Any]:
        return {"cipher": "chacha20-poly1305@openssh.com (OpenSSH's default)"}

    def stream(self, nbytes: int) -> int:
        host = self.env.names(1)[0]
        proc = subprocess.run(
            [*self._base(), host, f"head -c {nbytes} /dev/zero"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the fastest sink ssh can write to; `head` exiting 0 says N bytes went
            stderr=subprocess.PIPE,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ssh exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
        return nbytes

    def close(self) -> None:
        if self.master is not None:
            master, self.master = self.master, None
            subprocess.run([*self._base(), "-O", "exit", "unused"], capture_output=True, timeout=10, check=False)
            try:
                master.wait(5)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
