"""Option objects shared by every layer: one host's connection spec, timeouts, fleet-wide SSH options.

Options merge in one direction: defaults <- ssh_config <- inventory host vars <- explicit arguments. A ``None``
field means "not said here", so a later layer only overrides what it actually sets.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from sshfleet.errors import InventoryError, UsageError

HostKeyPolicy = Literal["strict", "accept-new"]
HOST_KEY_POLICIES: tuple[str, ...] = ("strict", "accept-new")
Transport = Literal["paramiko", "openssh"]
TRANSPORTS: tuple[str, ...] = ("paramiko", "openssh")


@dataclass(frozen=True)
class Timeouts:
    """Deadlines in seconds; none of them may be infinite, so nothing waits forever.

    connect: TCP connect (per address, per jump). auth: SSH banner + key exchange + authentication.
    bootstrap: probe, payload transfer and servicer start. call: default deadline of one RPC.
    close: how long ``close()`` waits for a host before abandoning it.
    """

    connect: float = 10.0
    auth: float = 20.0
    bootstrap: float = 120.0
    call: float = 60.0
    close: float = 5.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise UsageError(f"Timeouts.{f.name} must be a positive finite number, got {value!r}")

    def replace(self, **changes: float) -> Timeouts:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class HostSpec:
    """What the inventory (or a ``user@host:port`` string) says about one host.

    ``name`` is the host's inventory name: it is what results are keyed by and what ssh_config ``Host`` blocks
    match. ``hostname`` (Ansible's ``ansible_host``) is where to connect, when it differs from the name.
    """

    name: str
    hostname: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    identity_file: Optional[str] = None
    python: Optional[str] = None
    vars: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


_HOST_RE = re.compile(
    r"""^(?:(?P<user>[^@\s/]+)@)?                 # optional user@
        (?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^\s:@/\[\]]+))
        (?::(?P<port>\d+))?$""",
    re.VERBOSE,
)


def parse_host_string(text: str, path: Optional[str] = None, line: Optional[int] = None) -> HostSpec:
    """Parse ``[user@]host[:port]`` (IPv6 as ``[addr]:port``) into a HostSpec.

    Raises InventoryError naming ``path:line`` when given, so a bad line in a host list is easy to find.
    """
    text = text.strip()
    m = _HOST_RE.match(text)
    if not m:
        raise InventoryError(f"not a host: {text!r} (expected [user@]host[:port])", path, line)
    port = None
    if m.group("port") is not None:
        port = int(m.group("port"))
        if not 0 < port < 65536:
            raise InventoryError(f"port out of range in {text!r}", path, line)
    name = m.group("v6") or m.group("host")
    return HostSpec(name=name, user=m.group("user"), port=port)


@dataclass(frozen=True)
class SshOptions:
    """Fleet-wide SSH settings. Paths default to the user's OpenSSH files so sshfleet behaves like ``ssh``."""

    ssh_config: Optional[str] = "~/.ssh/config"
    known_hosts: Optional[str] = None  # None: UserKnownHostsFile from ssh_config, else ~/.ssh/known_hosts
    host_key_policy: HostKeyPolicy = "strict"
    identity_files: tuple[str, ...] = ()
    allow_agent: bool = True
    look_for_keys: bool = True
    user: Optional[str] = None
    port: Optional[int] = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    keepalive: float = 15.0
    forks: int = 64
    # "paramiko" (default, pure Python) or "openssh": the ssh binary with a ControlMaster per host, whose
    # forwards carry RPCs without any Python in the data path (faster; needs the OpenSSH client).
    transport: Transport = "paramiko"

    def __post_init__(self) -> None:
        if self.host_key_policy not in HOST_KEY_POLICIES:
            raise UsageError(
                f"host_key_policy must be one of {', '.join(HOST_KEY_POLICIES)}, got {self.host_key_policy!r}"
            )
        if self.transport not in TRANSPORTS:
            raise UsageError(f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if not isinstance(self.forks, int) or self.forks < 1:
            raise UsageError(f"forks must be a positive integer, got {self.forks!r}")

    def expand(self, p: str) -> str:
        return os.path.expanduser(p)

    def replace(self, **changes: object) -> SshOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
