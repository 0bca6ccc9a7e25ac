"""sshfleet: run gRPC agents on a fleet of hosts over SSH, with nothing pre-installed on them.

The public API is exactly what ``__all__`` lists; everything else is private and may change.
"""

from __future__ import annotations

from sshfleet import errors
from sshfleet._options import HostSpec, SshOptions, Timeouts
from sshfleet.errors import (
    AuthenticationError,
    BootstrapError,
    CallError,
    CallTimeout,
    ConnectError,
    FleetError,
    HostError,
    HostKeyError,
    InventoryError,
    SshFleetError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BootstrapError",
    "CallError",
    "CallTimeout",
    "ConnectError",
    "FleetError",
    "HostError",
    "HostKeyError",
    "HostSpec",
    "InventoryError",
    "SshFleetError",
    "SshOptions",
    "Timeouts",
    "UsageError",
    "__version__",
    "errors",
]
