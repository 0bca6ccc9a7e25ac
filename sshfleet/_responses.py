"""``Responses``: what one fleet-wide call returned, host by host, in host order.

Each host's outcome is either the reply message or a ``HostError``; nothing is ever dropped, so a host that
failed to start shows up in every call's Responses too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Optional, Union

from sshfleet.errors import FleetError, HostError

Outcome = Union[Any, HostError]  # a protobuf message (or any reply object) or the host's error


def _flag(reply: Any) -> Optional[bool]:
    """The reply's ``success`` field when the message has one, else None."""
    descriptor = getattr(reply, "DESCRIPTOR", None)
    if descriptor is not None and "success" in getattr(descriptor, "fields_by_name", {}):
        return bool(reply.success)
    if isinstance(reply, Mapping) and "success" in reply:
        return bool(reply["success"])
    return None


def _comment(reply: Any) -> str:
    descriptor = getattr(reply, "DESCRIPTOR", None)
    if descriptor is not None and "comment" in getattr(descriptor, "fields_by_name", {}):
        return str(reply.comment)
    return ""


class Responses(Mapping[str, Outcome]):
    """host -> outcome of one call, iterated in host order (the order the agent was given its hosts)."""

    def __init__(self, method: str, outcomes: Mapping[str, Outcome], *, error: type[FleetError] = FleetError) -> None:
        self.method = method
        self._outcomes = dict(outcomes)
        self._error = error  # what raise_for_status() raises: the agent's own XAgentException

    def __getitem__(self, host: str) -> Outcome:
        return self._outcomes[host]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)

    def ok(self, host: str) -> bool:
        """The host answered and, when the reply has a ``success`` field, it is true."""
        outcome = self._outcomes[host]
        return not isinstance(outcome, HostError) and _flag(outcome) is not False

    def success(self) -> bool:
        """Every host answered, and every reply with a ``success`` field says true."""
        return all(self.ok(host) for host in self._outcomes)

    @property
    def succeeded(self) -> dict[str, Any]:
        return {h: o for h, o in self._outcomes.items() if self.ok(h)}

    @property
    def failed(self) -> dict[str, Outcome]:
        """Hosts that did not succeed: an error, or a reply whose ``success`` is false."""
        return {h: o for h, o in self._outcomes.items() if not self.ok(h)}

    @property
    def errors(self) -> dict[str, HostError]:
        """Hosts that gave no reply at all (unreachable, bootstrap, RPC error, timeout)."""
        return {h: o for h, o in self._outcomes.items() if isinstance(o, HostError)}

    def status(self) -> str:
        """One readable line per host: ok or the reason it is not, with the servicer's comment."""
        width = max((len(h) for h in self._outcomes), default=0)
        lines = []
        for host, outcome in self._outcomes.items():
            if isinstance(outcome, HostError):
                first, *rest = outcome.message.splitlines() or [""]
                lines.append(f"{host:<{width}}  {outcome.kind.replace('_', ' ').upper()}: {first}")
                lines.extend(f"{'':<{width}}    {line}" for line in rest)
            else:
                comment = _comment(outcome)
                state = "ok" if self.ok(host) else "FAILED"
                lines.append(f"{host:<{width}}  {state}" + (f": {comment}" if comment else ""))
        return "\n".join(lines)

    def raise_for_status(self) -> Responses:
        """Raise FleetError (the agent's ``XAgentException`` for an agent's call), carrying every outcome,
        unless all hosts succeeded; return self otherwise."""
        if not self.success():
            raise self._error(self)
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A JSON-ready view: {host: {"ok": bool, "reply": {...}} or {"ok": false, "error": {...}}}."""
        from sshfleet._messages import message_to_dict

        out: dict[str, dict[str, Any]] = {}
        for host, outcome in self._outcomes.items():
            if isinstance(outcome, HostError):
                out[host] = {"ok": False, "error": outcome.to_dict()}
            elif hasattr(outcome, "DESCRIPTOR"):
                out[host] = {"ok": self.ok(host), "reply": message_to_dict(outcome)}
            else:
                out[host] = {"ok": self.ok(host), "reply": outcome}
        return out

    def __repr__(self) -> str:
        ok = sum(1 for h in self._outcomes if self.ok(h))
        return f"<Responses {self.method}: {ok}/{len(self)} ok>"

    def __str__(self) -> str:
        return self.status()
