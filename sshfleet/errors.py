"""Every error sshfleet raises or reports, in one place.

::

    SshFleetError
    ├─ InventoryError(.path, .line)     a malformed inventory, named by file and line
    ├─ ProtoError                       a .proto that cannot be compiled or turned into an agent
    ├─ UsageError                       a caller mistake: unknown method or field, wrong type, bad option
    ├─ HostError(.host)                 one host's failure; reported per host, never loses the others
    │  ├─ ConnectError(.phase)          could not get an authenticated SSH connection
    │  │  ├─ AuthenticationError        the host refused every key / password offered
    │  │  ├─ HostKeyError               unknown or changed host key under strict checking
    │  │  └─ ConnectTimeout             a connect phase ran past its deadline
    │  ├─ ChannelError                  the SSH connection broke after it was up (exec, forward, upload)
    │  ├─ BootstrapError(.log_tail)     the servicer could not be started on the host
    │  │  ├─ RemotePythonError          no usable python3 on the host, or one we cannot serve
    │  │  └─ PayloadError               the payload failed its hash check or could not be installed
    │  └─ CallError(.method, .code, .details, .remote_traceback)   an RPC failed on that host
    │     └─ CallTimeout                the RPC ran past its deadline
    └─ FleetError(.responses)           raised only on request (``Responses.raise_for_status()``)
       └─ AgentException                base of each generated agent's ``XAgentException``

Third-party exceptions (paramiko, grpc, OSError) are translated at the layer that meets them, always
``raise X(...) from exc`` so the original stays in ``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from sshfleet._responses import Responses

__all__ = [
    "AgentException",
    "AuthenticationError",
    "BootstrapError",
    "CallError",
    "CallTimeout",
    "ChannelError",
    "ConnectError",
    "ConnectTimeout",
    "FleetError",
    "HostError",
    "HostKeyError",
    "InventoryError",
    "PayloadError",
    "ProtoError",
    "RemotePythonError",
    "SshFleetError",
    "UsageError",
]


class SshFleetError(Exception):
    """Root of every sshfleet error."""


class InventoryError(SshFleetError):
    """An inventory file (or host string) that cannot be parsed; the message starts with ``file:line:``."""

    def __init__(self, message: str, path: Optional[str] = None, line: Optional[int] = None) -> None:
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class ProtoError(SshFleetError):
    """A .proto file that cannot be compiled or has no usable service."""


class UsageError(SshFleetError, ValueError):
    """A caller mistake, raised before anything goes on the network."""


class HostError(SshFleetError):
    """One host's failure. ``host`` is the inventory name of the host."""

    kind = "error"

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        self.message = message
        super().__init__(f"{host}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "type": type(self).__name__, "message": self.message}


class ConnectError(HostError):
    """No authenticated SSH connection. ``phase`` is one of tcp, banner, kex, hostkey, auth, proxy."""

    kind = "unreachable"

    def __init__(self, host: str, message: str, phase: str = "tcp") -> None:
        self.phase = phase
        super().__init__(host, message)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "phase": self.phase}


class AuthenticationError(ConnectError):
    kind = "auth_failed"

    def __init__(self, host: str, message: str, phase: str = "auth") -> None:
        super().__init__(host, message, phase)


class HostKeyError(ConnectError):
    kind = "hostkey_rejected"

    def __init__(self, host: str, message: str, phase: str = "hostkey") -> None:
        super().__init__(host, message, phase)


class ConnectTimeout(ConnectError):
    kind = "unreachable"


class ChannelError(HostError):
    """The SSH connection was up but an exec, forward or transfer on it failed."""

    kind = "channel_failed"


class BootstrapError(HostError):
    """The servicer could not be started. ``log_tail`` holds the last lines the host printed."""

    kind = "bootstrap_failed"

    def __init__(self, host: str, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        full = message if not log_tail else f"{message}\n--- remote output ---\n{log_tail.rstrip()}"
        super().__init__(host, full)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "log_tail": self.log_tail}


class RemotePythonError(BootstrapError):
    kind = "no_python"


class PayloadError(BootstrapError):
    kind = "payload_failed"


class CallError(HostError):
    """An RPC that failed on one host: gRPC status ``code`` plus the servicer's traceback when it raised."""

    kind = "call_failed"

    def __init__(
        self,
        host: str,
        method: str,
        code: str,
        details: str,
        remote_traceback: str = "",
    ) -> None:
        self.method = method
        self.code = code
        self.details = details
        self.remote_traceback = remote_traceback
        message = f"{method} failed: {code}: {details}"
        if remote_traceback:
            message += f"\n--- remote traceback ---\n{remote_traceback.rstrip()}"
        super().__init__(host, message)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "method": self.method,
            "code": self.code,
            "details": self.details,
            "remote_traceback": self.remote_traceback,
        }


class CallTimeout(CallError):
    kind = "timeout"


class FleetError(SshFleetError):
    """Some hosts failed; ``responses`` holds every host's outcome, the successes too."""

    def __init__(self, responses: Responses) -> None:
        self.responses = responses
        failed = ", ".join(responses.failed)
        super().__init__(f"{len(responses.failed)} of {len(responses)} hosts failed: {failed}")


class AgentException(FleetError):
    """Base of the ``XAgentException`` class that every generated agent module defines.

    ``Responses.raise_for_status()`` of an agent's call raises the agent's own exception, so a script can
    ``except TcpDumpAgentException`` as the seed's examples do, and still reach every host's outcome.
    """
