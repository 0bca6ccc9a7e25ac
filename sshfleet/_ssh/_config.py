"""Merge one host's SSH settings, without touching the network.

Order, each layer overriding only what it sets: defaults <- ssh_config <- inventory (HostSpec) <- explicit
SshOptions. The defaults of ``Timeouts.connect`` and ``keepalive`` are ``Default`` values (not given), so
ssh_config's ConnectTimeout / ServerAliveInterval win over them; any value the caller gave, even one equal to the
default, wins over ssh_config.

StrictHostKeyChecking: ``yes``/``ask`` mean strict, ``accept-new`` means accept-new, and ``no``/``off`` are
*not* honoured: sshfleet logs a warning and stays strict (accepting any key silently is how credentials leak;
pass ``host_key_policy='accept-new'`` to opt in to trust-on-first-use). An explicit
``host_key_policy='accept-new'`` always wins.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Optional

import paramiko

from sshfleet._options import HostKeyPolicy, HostSpec, SshOptions, given, parse_host_string
from sshfleet.errors import InventoryError, UsageError

log = logging.getLogger("sshfleet.ssh")

DEFAULT_PORT = 22
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
DEFAULT_KEEPALIVE_COUNT_MAX = 3


@dataclass(frozen=True)
class ResolvedHost:
    """Everything needed to reach one host, after merging all layers. ``name`` is the inventory name."""

    name: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    identities_only: bool
    allow_agent: bool
    look_for_keys: bool
    proxy_jump: tuple[ResolvedHost, ...]
    connect_timeout: float
    auth_timeout: float
    keepalive: float  # seconds between keepalives; 0 disables them
    keepalive_count_max: int
    known_hosts_files: tuple[str, ...]  # read in this order
    known_hosts_write: Optional[str]  # where accept-new appends (the first user file)
    host_key_policy: HostKeyPolicy
    host_key_alias: Optional[str] = None
    python: Optional[str] = None

    @property
    def host_key_names(self) -> tuple[str, ...]:
        """Names to look the host key up by: HostKeyAlias alone, else HostName, then the inventory name."""
        if self.host_key_alias:
            return (self.known_hosts_name(self.host_key_alias),)
        names = [self.known_hosts_name(self.hostname), self.known_hosts_name(self.name)]
        return tuple(dict.fromkeys(names))

    def known_hosts_name(self, host: str) -> str:
        return host if self.port == DEFAULT_PORT else f"[{host}]:{self.port}"

    @property
    def record_name(self) -> str:
        """The name accept-new writes a new key under."""
        return self.host_key_names[0]

    def connection_key(self) -> tuple[object, ...]:
        """What identifies the SSH connection this host gets: where, as whom, with which keys and host-key
        checks, through which jump chain. Timeouts, keepalive and the Python to run are left out on purpose:
        connections that differ only there are shared (the first one's settings serve them all)."""
        return (
            self.hostname,
            self.port,
            self.user,
            self.identity_files,
            self.identities_only,
            self.allow_agent,
            self.look_for_keys,
            self.known_hosts_files,
            self.known_hosts_write,
            self.host_key_policy,
            self.host_key_alias,
            tuple(hop.connection_key() for hop in self.proxy_jump),
        )


_KEYWORDS = {
    "port": "Port",
    "connecttimeout": "ConnectTimeout",
    "serveraliveinterval": "ServerAliveInterval",
    "serveralivecountmax": "ServerAliveCountMax",
}
_config_cache: dict[str, tuple[float, paramiko.SSHConfig]] = {}
_config_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


def _load_config(path: str) -> Optional[paramiko.SSHConfig]:
    """Parse ssh_config once per (path, mtime): a fleet resolves dozens of hosts against the same file."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    with _config_lock:
        cached = _config_cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
    try:
        config = paramiko.SSHConfig.from_path(path)
    except Exception as exc:  # paramiko raises bare exceptions for odd syntax
        raise UsageError(f"cannot parse ssh_config {path}: {exc}") from exc
    with _config_lock:
        _config_cache[path] = (mtime, config)
    return config


def _lookup(options: SshOptions, name: str) -> dict[str, Any]:
    if not options.ssh_config:
        return {}
    path = options.expand(options.ssh_config)
    config = _load_config(path)
    if config is None:
        return {}
    try:
        found: dict[str, Any] = dict(config.lookup(name))
    except Exception as exc:  # e.g. Match exec without the optional 'invoke' dependency
        raise UsageError(f"ssh_config {path}: cannot look up {name!r}: {exc}") from exc
    found["__path__"] = path
    return found


def _warn_once(key: tuple[str, str], message: str) -> None:
    with _config_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("%s", message)


def _int(config: dict[str, Any], key: str, path: str) -> Optional[int]:
    if key not in config:
        return None
    try:
        return int(config[key])
    except ValueError as exc:
        label = _KEYWORDS.get(key, key)
        raise UsageError(f"ssh_config {path}: {label} must be an integer, got {config[key]!r}") from exc


def _yes(config: dict[str, Any], key: str) -> Optional[bool]:
    value = config.get(key)
    if value is None:
        return None
    return str(value).lower() in ("yes", "true", "on")


def _expand_path(path: str, user: str, host: str) -> str:
    home = os.path.expanduser("~")
    path = path.replace("%d", home).replace("%u", getpass.getuser()).replace("%r", user).replace("%h", host)
    return os.path.expanduser(path)


def _policy(config: dict[str, Any], options: SshOptions, path: str) -> HostKeyPolicy:
    if options.host_key_policy == "accept-new":
        return "accept-new"
    value = str(config.get("stricthostkeychecking", "yes")).lower()
    if value == "accept-new":
        return "accept-new"
    if value in ("no", "off", "false"):
        _warn_once(
            (path, "stricthostkeychecking"),
            f"ssh_config {path}: StrictHostKeyChecking {value} is not honoured; sshfleet stays strict "
            "(use host_key_policy='accept-new' or --accept-new to trust new hosts on first use)",
        )
    return "strict"


def _parse_jumps(value: str, path: str) -> list[HostSpec]:
    hops = []
    for raw in value.split(","):
        text = raw.strip()
        if text.startswith("ssh://"):
            text = text[len("ssh://") :]
        try:
            hops.append(parse_host_string(text))
        except InventoryError as exc:
            raise UsageError(f"ssh_config {path}: bad ProxyJump hop {raw.strip()!r}") from exc
    return hops


def resolve(spec: HostSpec, options: SshOptions, *, _is_hop: bool = False) -> ResolvedHost:
    """Merge defaults <- ssh_config <- ``spec`` <- ``options`` for one host. Pure except for reading files.

    Raises UsageError for an ssh_config that cannot be used (bad numbers, bad ProxyJump, ProxyCommand).
    Jump hosts are resolved through ssh_config too, with ``options.user``/``options.port`` left out (like
    ``ssh -l``, they are for the destination); a jump host's own ProxyJump is ignored so chains cannot loop.
    """
    config = _lookup(options, spec.name)
    path = str(config.get("__path__", options.ssh_config or ""))
    if "proxycommand" in config and str(config["proxycommand"]).lower() != "none":
        raise UsageError(f"ssh_config {path}: ProxyCommand is not supported for {spec.name}; use ProxyJump")

    hostname = spec.hostname or str(config.get("hostname") or spec.name)
    port = _int(config, "port", path) or DEFAULT_PORT
    user = str(config.get("user") or getpass.getuser())
    if spec.port is not None:
        port = spec.port
    if spec.user is not None:
        user = spec.user
    if not _is_hop:
        if options.port is not None:
            port = options.port
        if options.user is not None:
            user = options.user

    identity_files: list[str] = []
    for raw in (*options.identity_files, spec.identity_file, *config.get("identityfile", [])):
        if raw:
            expanded = _expand_path(str(raw), user, hostname)
            if expanded not in identity_files:
                identity_files.append(expanded)
    if not identity_files and options.look_for_keys:
        # Like OpenSSH: the default identities are tried only when nothing names a key.
        identity_files = [p for p in map(os.path.expanduser, DEFAULT_IDENTITIES) if os.path.exists(p)]
    identities_only = bool(_yes(config, "identitiesonly"))

    connect_timeout = options.timeouts.connect
    config_connect = _int(config, "connecttimeout", path)
    if config_connect and not given(options.timeouts.connect):
        connect_timeout = float(config_connect)
    keepalive = float(options.keepalive)
    config_alive = _int(config, "serveraliveinterval", path)
    if config_alive is not None and not given(options.keepalive):
        keepalive = float(config_alive)
    count_max = _int(config, "serveralivecountmax", path) or DEFAULT_KEEPALIVE_COUNT_MAX

    if options.known_hosts:
        user_files = [options.expand(options.known_hosts)]
        read_files = list(user_files)
    else:
        configured = str(config.get("userknownhostsfile", DEFAULT_KNOWN_HOSTS)).split()
        user_files = [_expand_path(p, user, hostname) for p in configured]
        global_files = str(config.get("globalknownhostsfile", " ".join(GLOBAL_KNOWN_HOSTS))).split()
        read_files = user_files + [_expand_path(p, user, hostname) for p in global_files]
    write_file = next((p for p in user_files if p != os.devnull), None)

    jumps: tuple[ResolvedHost, ...] = ()
    proxy_jump = config.get("proxyjump")
    if not _is_hop and proxy_jump and str(proxy_jump).lower() != "none":
        jumps = tuple(resolve(hop, options, _is_hop=True) for hop in _parse_jumps(str(proxy_jump), path))

    return ResolvedHost(
        name=spec.name,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=tuple(identity_files),
        identities_only=identities_only,
        allow_agent=options.allow_agent,
        look_for_keys=options.look_for_keys,
        proxy_jump=jumps,
        connect_timeout=connect_timeout,
        auth_timeout=options.timeouts.auth,
        keepalive=max(0.0, keepalive),
        keepalive_count_max=max(1, count_max),
        known_hosts_files=tuple(dict.fromkeys(read_files)),
        known_hosts_write=write_file,
        host_key_policy=_policy(config, options, path),
        host_key_alias=str(config["hostkeyalias"]) if config.get("hostkeyalias") else None,
        python=spec.python,
    )
