"""The SSH seam: the only code that imports paramiko.

Everything above it talks to hosts through ``connect()`` / ``SshConnection`` (exec, open_forward, close) and
``connect_all()`` in ``sshfleet._fleetconnect``; paramiko errors are translated here into ``sshfleet.errors``.
"""

from __future__ import annotations

from sshfleet._ssh._config import ResolvedHost, resolve
from sshfleet._ssh._connection import (
    MAX_PACKET_SIZE,
    PREFERRED_CIPHERS,
    WINDOW_SIZE,
    Channel,
    JumpPool,
    SshConnection,
    connect,
)
from sshfleet._ssh._openssh import OpenSshConnection, PipeChannel, connect_openssh

__all__ = [
    "MAX_PACKET_SIZE",
    "PREFERRED_CIPHERS",
    "WINDOW_SIZE",
    "Channel",
    "JumpPool",
    "OpenSshConnection",
    "PipeChannel",
    "ResolvedHost",
    "SshConnection",
    "connect",
    "connect_openssh",
    "resolve",
]
