"""The public API is exactly what sshfleet.__all__ lists, and every name in it resolves."""

from __future__ import annotations

import sshfleet

EXPECTED = {
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
}


def test_all_is_the_public_api():
    assert set(sshfleet.__all__) == EXPECTED
    for name in sshfleet.__all__:
        assert getattr(sshfleet, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    try:
        sshfleet.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("sshfleet.NoSuchThing resolved")
