"""The OpenSSH transport's pure parts: the argv of the master and its clients, and ssh's stderr as sshfleet errors.

Kept apart from the processes so they can be tested without a network or a running ssh.
"""

from __future__ import annotations

import math
import os
import re
from typing import Optional

from sshfleet._ssh._config import ResolvedHost
from sshfleet._ssh._errors import openssh_failure
from sshfleet.errors import ConnectError

SSH = "ssh"
# Same preference as the paramiko path: AES-GCM is the fastest cipher with AES-NI; the rest stays in ssh's order.
CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
# curve25519 first, as paramiko negotiates: OpenSSH 9's default sntrup761x25519 costs ~10x the CPU per connect
# (~100 ms per host on a busy controller), which a fleet connect pays hundreds of times. It stays offered.
KEX = "^curve25519-sha256,curve25519-sha256@libssh.org"


# --- argv (pure) -----------------------------------------------------------------------------------------


def _value(text: str) -> str:
    """An ssh_config value: ssh splits on whitespace unless quoted."""
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def mux_argv(ctl: str, ssh: str = SSH, log_level: str = "ERROR") -> list[str]:
    """Options shared by every client of a master; a dead master then fails fast instead of dialling out.

    LogLevel ERROR keeps "Shared connection to ... closed." out of a pty session's output.
    """
    return [
        ssh, "-F", "none", "-S", ctl,
        "-o", "ControlMaster=no", "-o", "ProxyCommand=false", "-o", "BatchMode=yes", "-o", f"LogLevel={log_level}",
    ]  # fmt: skip


def proxy_command(jump_ctl: str, jump_host: str, ssh: str = SSH) -> str:
    """ProxyCommand through the master at ``jump_ctl``; ``%h:%p`` is the next hop's HostName and Port."""
    words = [*mux_argv(jump_ctl.replace("%", "%%"), ssh), "-W", "%h:%p", "--", jump_host]
    return " ".join(_shell_word(w) for w in words)


def _shell_word(word: str) -> str:
    if word and re.fullmatch(r"[\w@%+=:,./^-]+", word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def master_argv(host: ResolvedHost, ctl: str, *, jump_ctl: Optional[str] = None, jump_host: str = "",
                ssh: str = SSH) -> list[str]:  # fmt: skip
    """The argv of the master for ``host``: every setting comes from ``resolve()``, nothing from ssh_config."""
    options = {"ControlPersist": "no", "ExitOnForwardFailure": "yes", **_client_options(host)}
    options["ProxyCommand"] = proxy_command(jump_ctl, jump_host, ssh) if jump_ctl else "none"
    return [ssh, "-F", "none", "-M", "-S", ctl, "-N", "-T", *_option_args(host, options), "--", host.hostname]


def oneshot_argv(host: ResolvedHost, command: str, ssh: str = SSH) -> list[str]:
    """A one-off session straight to ``host``, no master: `sshfleet run`'s plain commands, one ssh per host as
    clush and pssh run them. Same settings as a master; LogLevel ERROR keeps ssh's notices (accept-new's
    "Permanently added") out of the command's stderr, its errors still show. A direct host only (no jump)."""
    options = {**_client_options(host), "ProxyCommand": "none", "LogLevel": "ERROR"}
    return [ssh, "-F", "none", "-T", *_option_args(host, options), "--", host.hostname, command]


def _client_options(host: ResolvedHost) -> dict[str, str]:
    options = {
        "BatchMode": "yes",
        "ServerAliveInterval": str(math.ceil(host.keepalive)) if host.keepalive > 0 else "0",
        "ServerAliveCountMax": str(host.keepalive_count_max),
        "ConnectTimeout": str(_seconds(host.connect_timeout)),
        "HostName": host.hostname,
        "Port": str(host.port),
        "User": host.user,
        "IdentitiesOnly": "yes" if host.identities_only else "no",
        "StrictHostKeyChecking": "accept-new" if host.host_key_policy == "accept-new" else "yes",
        "UserKnownHostsFile": _known_hosts_value(host),
        "GlobalKnownHostsFile": os.devnull,
        # sshfleet never rewrites known_hosts behind the user's back, and writes names the way paramiko does.
        "UpdateHostKeys": "no",
        "HashKnownHosts": "no",
        "CheckHostIP": "no",
        "PreferredAuthentications": "publickey",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "Ciphers": CIPHERS,
        "KexAlgorithms": KEX,
        "ProxyJump": "none",
    }
    if host.host_key_alias:
        options["HostKeyAlias"] = host.host_key_alias
    if not host.allow_agent:
        options["IdentityAgent"] = "none"
    return options


def _option_args(host: ResolvedHost, options: dict[str, str]) -> list[str]:
    argv = []
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    # Without this OpenSSH would fall back to ~/.ssh/id_*; resolve() already decided which keys to offer.
    for path in host.identity_files or ("none",):
        argv += ["-o", f"IdentityFile={_value(path)}"]
    return argv


def _known_hosts_value(host: ResolvedHost) -> str:
    files = list(host.known_hosts_files)
    if host.known_hosts_write and host.known_hosts_write in files:
        # accept-new appends to the first file, as resolve() chose.
        files.remove(host.known_hosts_write)
        files.insert(0, host.known_hosts_write)
    return " ".join(_value(f) for f in files) or os.devnull


def forward_spec(path: str, dest_host: str, dest_port: int) -> str:
    """``-L`` argument forwarding the local socket ``path`` to ``dest_host:dest_port``."""
    where = f"[{dest_host}]" if ":" in dest_host else dest_host
    return f"{path}:{where}:{dest_port}"


def exec_argv(ctl: str, hostname: str, command: str, *, pty: bool, width: int, height: int,
              ssh: str = SSH) -> list[str]:  # fmt: skip
    """A session over the master; with a pty, ``stty`` sets its size (the mux client has no terminal to copy)."""
    if pty:
        command = f"stty cols {int(width)} rows {int(height)} 2>/dev/null; {command}"
    tty = ["-tt", "-o", "EscapeChar=none"] if pty else ["-T"]
    return [*mux_argv(ctl, ssh), *tty, "--", hostname, command]


# --- error translation (pure) ----------------------------------------------------------------------------

_NOISE = re.compile(r"^(Please contact your system administrator\.?|Add correct host key in .*)$")


def ssh_message(text: str, limit: int = 1200) -> str:
    """ssh's stderr in one line: banner borders and boilerplate dropped, the rest joined with ' / '."""
    kept = []
    for raw in text.replace("\r", "").splitlines():
        line = raw.strip().strip("@").strip()
        line = line[len("ssh: ") :] if line.startswith("ssh: ") else line
        if line and not _NOISE.match(line):
            kept.append(line)
    joined = " / ".join(dict.fromkeys(kept))
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def translate_failure(host: ResolvedHost, stderr: str, *, timed_out: bool, waited: float,
                      jump: Optional[str] = None) -> ConnectError:  # fmt: skip
    """The sshfleet error for a master that did not come up, from what ssh printed (kept in the message);
    the table is ``_errors.OPENSSH_MESSAGES``."""
    return openssh_failure(host, stderr, ssh_message(stderr), timed_out=timed_out, waited=waited, jump=jump)
