"""sshfleet: run gRPC agents on a fleet of hosts over SSH, with nothing pre-installed on them.

The public API is exactly what ``__all__`` lists; everything else is private and may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sshfleet import errors
from sshfleet._options import HostSpec, SshOptions, Timeouts
from sshfleet.errors import (
    AgentException,
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

if TYPE_CHECKING:
    from sshfleet._agent import Agent
    from sshfleet._codegen import load_agent
    from sshfleet._controller import calling_host
    from sshfleet._files import Transfer
    from sshfleet._fleet import Fleet
    from sshfleet._responses import Responses
    from sshfleet.inventory import Inventory, load_hosts

__version__ = "0.1.0"

# Imported on first use: they pull in grpc, which `sshfleet ping` and `--help` do not need.
_LAZY = {
    "Agent": "sshfleet._agent",
    "Fleet": "sshfleet._fleet",
    "calling_host": "sshfleet._controller",
    "Responses": "sshfleet._responses",
    "Transfer": "sshfleet._files",
    "load_agent": "sshfleet._codegen",
    "Inventory": "sshfleet.inventory",
    "load_hosts": "sshfleet.inventory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sshfleet' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Agent",
    "AgentException",
    "AuthenticationError",
    "BootstrapError",
    "CallError",
    "CallTimeout",
    "ConnectError",
    "Fleet",
    "FleetError",
    "HostError",
    "HostKeyError",
    "HostSpec",
    "Inventory",
    "InventoryError",
    "Responses",
    "SshFleetError",
    "SshOptions",
    "Timeouts",
    "Transfer",
    "UsageError",
    "__version__",
    "calling_host",
    "errors",
    "load_agent",
    "load_hosts",
]
