"""Option objects shared by every layer: one host's connection spec, timeouts, fleet-wide SSH options.

Options merge in one direction: defaults <- ssh_config <- inventory host vars <- explicit arguments. A ``None``
field means "not said here", so a later layer only overrides what it actually sets. Where a field has a number
as its default (the timeouts, ``keepalive``), the default is a ``Default`` (a float marked "not given", asyncssh's
``()`` idea): ``given(value)`` tells it apart from an explicit value, even one equal to the default, so an explicit
``keepalive=5`` still wins over an ssh_config's ServerAliveInterval.

Three kinds of settings, kept apart (DESIGN.md "Options"):

* connection settings say which SSH connection a host gets (host, user, port, keys, known_hosts, host key
  policy, jump chain, transport): after ssh_config is applied, they are the key under which one connection per
  host is shared by every agent and Fleet (``_ssh.connection_key``);
* fleet settings (``forks``, the phase timeouts, ``keepalive``) say how a fleet uses its connections;
* call settings (``Timeouts.call``, a call's own ``timeout=``) say how long one call may take.

Fleet and call settings are never part of the sharing key: two agents that differ only in their call timeout
share one connection per host.

Launch settings say how one agent's servicer starts on a host: the interpreter (``python``) and ``become`` (run it
as another user through sudo, Ansible's word). They belong to the agent, not the connection or the fleet: a
TcpDumpAgent as root and an ExecAgent as the login user share one connection per host. ``resolve_become`` merges
them as options merge: defaults <- inventory host vars (HostSpec) <- the agent's arguments.
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


class Default(float):
    """A default number that nobody gave: it reads as the number, and ``given()`` is false for it."""

    def __repr__(self) -> str:
        return f"Default({float(self)!r})"


def given(value: object) -> bool:
    """True for a value someone set, false for a ``Default`` (even when the set value equals the default)."""
    return not isinstance(value, Default)


@dataclass(frozen=True)
class Timeouts:
    """Deadlines in seconds; none of them may be infinite, so nothing waits forever.

    connect: TCP connect (per address, per jump). auth: SSH banner + key exchange + authentication.
    bootstrap: probe, payload transfer and servicer start. call: default deadline of one RPC.
    close: how long ``close()`` waits for a host before abandoning it.
    A field left out is a ``Default``: ssh_config's ConnectTimeout applies to ``connect`` only then.
    """

    connect: float = Default(10.0)
    auth: float = Default(20.0)
    bootstrap: float = Default(120.0)
    call: float = Default(60.0)
    close: float = Default(5.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise UsageError(f"Timeouts.{f.name} must be a positive finite number, got {value!r}")

    def replace(self, **changes: float) -> Timeouts:
        return dataclasses.replace(self, **changes)

    def over(self, base: Timeouts) -> Timeouts:
        """``base`` with the fields given here (not left as defaults) taking their place."""
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if given(getattr(self, f.name))}
        return base.replace(**changes) if changes else base


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
    # Launch settings from ansible_become / _become_user / _become_password (None: not said by the inventory).
    become: Optional[bool] = None
    become_user: Optional[str] = None
    become_password: Optional[str] = field(default=None, repr=False, compare=False, hash=False)


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


BECOME_METHODS: tuple[str, ...] = ("sudo",)


@dataclass(frozen=True)
class Become:
    """Start the servicer as ``user`` through sudo (Ansible's become, sudo method only).

    Without a ``password`` the command is ``sudo -n``: a host that wants one fails at once with sudo's own
    words, rather than waiting on a prompt nobody answers. A password is sent on the bootstrap channel's stdin
    (``sudo -S``), never in argv or the environment; it is left out of ``repr`` so a log line cannot show it.
    """

    user: str = "root"
    password: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.user or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\$?", self.user):
            raise UsageError(f"become_user must be a user name, got {self.user!r}")
        if self.password is not None and ("\n" in self.password or "\r" in self.password or "\0" in self.password):
            raise UsageError("become_password must be one line (sudo reads it up to the first newline)")


def resolve_become(
    spec: HostSpec,
    become: Optional[bool] = None,
    become_user: Optional[str] = None,
    become_password: Optional[str] = None,
) -> Optional[Become]:
    """The Become for ``spec``'s host, or None to start the servicer as the login user.

    As Ansible does, only ``become`` (the argument, else the inventory's ``ansible_become``) turns it on;
    ``become_user`` (default root) and ``become_password`` only say how. An argument wins over the inventory,
    so ``become=False`` keeps a host whose inventory says ``ansible_become=true`` as its login user.
    """
    enabled = become if become is not None else spec.become
    if not enabled:
        return None
    user = become_user if become_user is not None else spec.become_user
    password = become_password if become_password is not None else spec.become_password
    return Become(user=user or "root", password=password)


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def parse_bool(text: str) -> Optional[bool]:
    """An inventory boolean as Ansible reads one (yes/no, true/false, on/off, 1/0), None if it is none of them."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


@dataclass(frozen=True)
class SshOptions:
    """Fleet-wide SSH settings. Paths default to the user's OpenSSH files so sshfleet behaves like ``ssh``.

    Connection settings: ssh_config, known_hosts, host_key_policy, identity_files, allow_agent, look_for_keys,
    user, port, transport. Fleet settings: timeouts (connect, auth, bootstrap, close), keepalive, forks.
    Call settings: timeouts.call. See the module docstring for why they are kept apart.
    """

    ssh_config: Optional[str] = "~/.ssh/config"
    known_hosts: Optional[str] = None  # None: UserKnownHostsFile from ssh_config, else ~/.ssh/known_hosts
    host_key_policy: HostKeyPolicy = "strict"
    identity_files: tuple[str, ...] = ()
    allow_agent: bool = True
    look_for_keys: bool = True
    user: Optional[str] = None
    port: Optional[int] = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    # Seconds between keepalives (ServerAliveInterval); 0 disables them. A link that stays silent for
    # keepalive * ServerAliveCountMax (3) is dead: 15 s by default, so a lost host is noticed, and revived, soon.
    keepalive: float = Default(5.0)
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
