"""Helpers shared by the SSH tests of both transports (paramiko and OpenSSH)."""

from __future__ import annotations

import subprocess

from sshfleet._options import HostSpec, SshOptions


def direct(bed, name: str = "node01", **changes) -> tuple[HostSpec, SshOptions]:
    """Spec and options for ``name`` that skip the testbed's ssh_config (and so its IdentityFile)."""
    spec = HostSpec(name, hostname=bed.host(name).address, user="root")
    options = SshOptions(
        ssh_config=None,
        known_hosts=str(bed.known_hosts),
        identity_files=(str(bed.client_key),),
        allow_agent=False,
        look_for_keys=False,
    )
    return spec, options.replace(**changes)


def new_key(tmp_path, name: str = "other_key") -> str:
    """A fresh ed25519 key that no testbed host knows."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return str(path)


def jump_config(bed, tmp_path, extra: str = "") -> SshOptions:
    """Options whose ssh_config reaches ``via-node01`` (node02's address) only through ``ProxyJump node01``,
    plus the testbed's own blocks and ``extra``."""
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host via-node01\n    HostName {bed.host('node02').address}\n    ProxyJump node01\n"
        f"    User root\n    IdentityFile {bed.client_key}\n    UserKnownHostsFile {bed.known_hosts}\n"
        + extra
        + "\n"
        + bed.ssh_config.read_text()
    )
    return SshOptions(ssh_config=str(config), allow_agent=False, look_for_keys=False)
