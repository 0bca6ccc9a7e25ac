"""The files a testbed writes: keys, sshd_config, the start script of a host, and the client-side files.

Pure text generation plus ssh-keygen, so the shape of every file can be read in one place.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sshfleet._testbed.system import ROOT_PATH, SSHD, TestbedError

LOGIN_USERS = ("root", "fleet")
ETC_HOSTS = "etc_hosts"  # in the state dir; the hosts' /etc/hosts, so they resolve each other by name


@dataclass(frozen=True)
class HostLayout:
    """Where one host's files live, and what its mount namespace puts where."""

    name: str
    address: str
    netns: str
    sshd_config: Path
    host_key: Path
    pid_file: Path
    log_file: Path
    tmp_dir: Path
    # login user -> (directory mounted over that user's ~/.cache in the host, the ~/.cache it covers)
    cache_mounts: tuple[tuple[str, Path, Path], ...]


def generate_keys(specs: Sequence[tuple[Path, str]], timeout: float = 30.0) -> None:
    """Generate ed25519 keys (no passphrase) in parallel: ssh-keygen is the slowest part of a small ``up``."""
    procs = []
    for path, comment in specs:
        for stale in (path, path.with_name(path.name + ".pub")):
            stale.unlink(missing_ok=True)
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
        procs.append((argv, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    errors = []
    for argv, proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            err = f"timed out after {timeout:g}s"
        if proc.returncode != 0:
            errors.append(f"{' '.join(argv)}: {err.strip()}")
    if errors:
        raise TestbedError("ssh-keygen failed: " + "; ".join(errors))


def public_key(path: Path) -> str:
    """``type base64`` of a key pair's public half (no comment)."""
    fields = path.with_name(path.name + ".pub").read_text(encoding="ascii").split()
    return f"{fields[0]} {fields[1]}"


def sshd_config_text(host: HostLayout, authorized_keys: Path) -> str:
    """One host's sshd_config.

    Keys are served by ``AuthorizedKeysCommand`` (run as root) rather than ``AuthorizedKeysFile`` because sshd
    reads key files as the login user, and the 0700 state directory is closed to the non-root user.
    """
    return f"""\
# sshfleet testbed host {host.name}; generated, rewritten by every `up`.
Port 22
ListenAddress {host.address}
HostKey {host.host_key}
PidFile {host.pid_file}
LogLevel VERBOSE
AuthorizedKeysFile none
AuthorizedKeysCommand /usr/bin/cat {authorized_keys}
AuthorizedKeysCommandUser root
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
X11Forwarding no
PrintMotd no
MaxSessions 64
MaxStartups 512
MaxAuthTries 10
# Like most production servers, drop sessions whose client vanished (a cut link), within ~6 s.
ClientAliveInterval 2
ClientAliveCountMax 3
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
"""


def mount_script(host: HostLayout, state_dir: Path) -> str:
    """Shell run inside the host's fresh mount + UTS namespaces before ``exec "$@"``.

    A private /tmp would hide the state directory when it lives under /tmp, yet sshd re-reads its host key,
    log file and authorized keys there on every connection; so the state directory is bind-mounted back at its
    own path inside the host's /tmp before that /tmp is mounted.
    """
    q = shlex.quote
    lines = ["set -e", f"hostname {q(host.name)}"]
    for _, source, target in host.cache_mounts:
        lines.append(f"mount --bind {q(str(source))} {q(str(target))}")
    lines.append(f"mount --bind {q(str(state_dir / ETC_HOSTS))} /etc/hosts")
    inside = state_inside_tmp(state_dir)
    if inside is not None:
        lines.append(f"mount --bind {q(str(state_dir))} {q(str(host.tmp_dir / inside))}")
        lines.append(f"mount --rbind {q(str(host.tmp_dir))} /tmp")
    else:
        lines.append(f"mount --bind {q(str(host.tmp_dir))} /tmp")
    lines.append(f"export PATH={ROOT_PATH}")
    lines.append('exec "$@"')
    return "\n".join(lines)


def state_inside_tmp(state_dir: Path) -> Path | None:
    """The state directory's path relative to /tmp, or None when it lives elsewhere."""
    try:
        return Path(os.path.realpath(state_dir)).relative_to("/tmp")
    except ValueError:
        return None


def host_command(host: HostLayout, state_dir: Path, argv: Sequence[str]) -> list[str]:
    """argv running ``argv`` as root in a fresh copy of the host's namespaces (netns, mounts, hostname)."""
    return [
        "ip", "netns", "exec", host.netns,
        "unshare", "--mount", "--uts", "--propagation", "private",
        "sh", "-c", mount_script(host, state_dir), "sh", *argv,
    ]  # fmt: skip


def sshd_command(host: HostLayout, state_dir: Path) -> list[str]:
    """argv that starts the host's sshd; it daemonizes and writes its pid file once it listens."""
    return host_command(host, state_dir, [SSHD, "-f", str(host.sshd_config), "-E", str(host.log_file)])


def ssh_config_text(hosts: Sequence[HostLayout], client_key: Path, known_hosts: Path) -> str:
    """One block per host, matched by its name and by its address: Ansible connects to ``ansible_host`` (the
    address) with ``-F`` this file, and must get the same key and known_hosts as ``ssh nodeNN`` does."""
    blocks = [f"# sshfleet testbed: {len(hosts)} hosts; generated, removed by `sshfleet testbed down`.\n"]
    for host in hosts:
        blocks.append(
            f"""Host {host.name} {host.address}
    HostName {host.address}
    User root
    Port 22
    IdentityFile {client_key}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
"""
        )
    return "\n".join(blocks)


def etc_hosts_text(hosts: Sequence[HostLayout]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{h.address}\t{h.name}" for h in hosts]
    return "\n".join(lines) + "\n"


def known_hosts_text(hosts: Sequence[HostLayout]) -> str:
    return "".join(f"{h.name},{h.address} {public_key(h.host_key)}\n" for h in hosts)


def inventory_text(hosts: Sequence[HostLayout], client_key: Path, ssh_config: Path) -> str:
    """Ansible INI inventory; ``[odd]``/``[even]`` give tests two disjoint groups for free."""
    out = ["[all]"]
    out += [f"{h.name} ansible_host={h.address}" for h in hosts]
    for group, parity in (("odd", 1), ("even", 0)):
        out += ["", f"[{group}]"]
        out += [h.name for i, h in enumerate(hosts, start=1) if i % 2 == parity]
    out += [
        "",
        "[all:vars]",
        "ansible_user=root",
        "ansible_port=22",
        f"ansible_ssh_private_key_file={client_key}",
        f"ansible_ssh_common_args=-F {ssh_config}",
    ]
    return "\n".join(out) + "\n"


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file atomically with ``mode`` (readers such as sshd never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
