"""The SSH seam: the only package that imports paramiko or runs the ``ssh`` binary.

Everything above it talks to hosts through the ``Connection`` / ``Channel`` / ``Forward`` Protocols of
``_seam.py``, got from ``open_connection()``; which transport serves them (paramiko, the default, or the OpenSSH
client with a ControlMaster) is known only here. Both transports' errors are translated into ``sshfleet.errors``
(``_errors.py``). ``connect()`` / ``connect_openssh()`` and the concrete classes are exported for the transports'
own tests and the benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sshfleet._options import SshOptions
from sshfleet._ssh._config import ResolvedHost, prefetch, resolve

if TYPE_CHECKING:
    from sshfleet._ssh._connection import (
        MAX_PACKET_SIZE,
        PREFERRED_CIPHERS,
        WINDOW_SIZE,
        SshConnection,
        connect,
    )
    from sshfleet._ssh._openssh import OpenSshConnection, PipeChannel, connect_openssh, connect_resolved_openssh
    from sshfleet._ssh._seam import Channel, Connection, Forward, RemoteForward

# The transports are imported on first use: paramiko alone costs ~150 ms, which `sshfleet run`'s one-off ssh
# processes (``_oneshot``) and ssh_config resolution never need.
_LAZY = {
    "Channel": "sshfleet._ssh._seam",
    "Connection": "sshfleet._ssh._seam",
    "Forward": "sshfleet._ssh._seam",
    "RemoteForward": "sshfleet._ssh._seam",
    "MAX_PACKET_SIZE": "sshfleet._ssh._connection",
    "PREFERRED_CIPHERS": "sshfleet._ssh._connection",
    "WINDOW_SIZE": "sshfleet._ssh._connection",
    "SshConnection": "sshfleet._ssh._connection",
    "connect": "sshfleet._ssh._connection",
    "OpenSshConnection": "sshfleet._ssh._openssh",
    "PipeChannel": "sshfleet._ssh._openssh",
    "connect_openssh": "sshfleet._ssh._openssh",
    "connect_resolved_openssh": "sshfleet._ssh._openssh",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sshfleet._ssh' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def open_connection(host: ResolvedHost, options: SshOptions) -> Connection:
    """An authenticated connection to ``host`` with the transport ``options.transport`` names.

    Raises a ConnectError subclass naming the phase that failed (ConnectTimeout, AuthenticationError,
    HostKeyError, or ConnectError itself), the same for both transports.
    """
    if options.transport == "openssh":
        from sshfleet._ssh._openssh import connect_resolved_openssh

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
    "connect_resolved_openssh",
    "connection_key",
    "open_connection",
    "prefetch",
    "resolve",
]
