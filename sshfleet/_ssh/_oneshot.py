"""One-off ``ssh`` client processes, one per host, for `sshfleet run`'s plain commands (``sshfleet._adhoc``).

No master, no paramiko: the process runs the command and ends, as ``ssh host cmd``, clush and pssh do it, so a
run of one command pays one SSH handshake per host and nothing else. The settings are the OpenSSH transport's
(``_openssh_args``): everything from ``resolve()``, strict host-key checking, nothing read from ssh_config.
"""

from __future__ import annotations

import subprocess

from sshfleet._ssh._config import ResolvedHost
from sshfleet._ssh._openssh_args import oneshot_argv, translate_failure
from sshfleet._ssh._sshg import ssh_binary
from sshfleet.errors import ConnectError

SSH_FAILED = 255  # ssh's own exit status for a connection it could not make or keep


def available(host: ResolvedHost) -> bool:
    """Whether ``host`` can be reached by a one-off ssh: the binary is here and no jump host is in the way."""
    return ssh_binary() is not None and not host.proxy_jump


def spawn(host: ResolvedHost, command: str) -> subprocess.Popen[bytes]:
    """``ssh host command`` with pipes on all three streams, in a session of its own: the terminal's Ctrl-C is
    ours to forward as a message, and must not kill the ssh processes (that would only cut the channels)."""
    ssh = ssh_binary() or "ssh"
    return subprocess.Popen(
        oneshot_argv(host, command, ssh),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        start_new_session=True,
    )


def failure(host: ResolvedHost, stderr: bytes, *, timed_out: bool, waited: float) -> ConnectError:
    """The sshfleet error for a one-off ssh that never reached the command, from what ssh printed."""
    return translate_failure(host, stderr.decode("utf-8", "replace"), timed_out=timed_out, waited=waited)
