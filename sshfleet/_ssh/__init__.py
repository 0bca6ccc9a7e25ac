"""The SSH seam: the only package that imports paramiko or runs the ``ssh`` binary.

Everything above it talks to hosts through the ``Connection`` / ``Channel`` / ``Forward`` Protocols of
``_seam.py``, got from ``open_connection()``; which transport serves them (paramiko, the default, or the OpenSSH
client with a ControlMaster) is known only here. Both transports' errors are translated into ``sshfleet.errors``
(``_errors.py``). ``connect()`` / ``connect_openssh()`` and the concrete classes are exported for the transports'
own tests and the benchmarks.
"""

from __future__ import annotations

from sshfleet._options import SshOptions
from sshfleet._ssh._config import ResolvedHost, prefetch, resolve
from sshfleet._ssh._connection import (
    MAX_PACKET_SIZE,
    PREFERRED_CIPHERS,
    WINDOW_SIZE,
    SshConnection,
    connect,
)
from sshfleet._ssh._openssh import OpenSshConnection, PipeChannel, connect_openssh, connect_resolved_openssh
from sshfleet._ssh._seam import Channel, Connection, Forward, RemoteForward


def open_connection(host: ResolvedHost, options: SshOptions) -> Connection:
    """An authenticated connection to ``host`` with the transport ``options.transport`` names.

    Raises a ConnectError subclass naming the phase that failed (ConnectTimeout, AuthenticationError,
    HostKeyError, or ConnectError itself), the same for both transports.
    """
    if options.transport == "openssh":
        return connect_resolved_openssh(host, options)
    from sshfleet._ssh._connection import _connect_resolved

    return _connect_resolved(host, options)


def connection_key(host: ResolvedHost, options: SshOptions) -> tuple[object, ...]:
    """The key under which connections are shared: the host's connection settings and the transport."""
    return (options.transport, *host.connection_key())


__all__ = [
    "MAX_PACKET_SIZE",
    "PREFERRED_CIPHERS",
    "WINDOW_SIZE",
    "Channel",
    "Connection",
    "Forward",
    "OpenSshConnection",
    "PipeChannel",
    "RemoteForward",
    "ResolvedHost",
    "SshConnection",
    "connect",
    "connect_openssh",
    "connection_key",
    "open_connection",
    "prefetch",
    "resolve",
]
