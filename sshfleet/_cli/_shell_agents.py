"""Which agent a name means (``sysinfo``, ``SysinfoAgent``, ``path/x.proto``), and what its methods look like.

Shared by ``sshfleet call`` and ``sshfleet shell``. The built-in agents live in the top-level ``agents``
package (generated code, outside the strictly typed sshfleet/): they are imported by name and typed as
``type[Agent]`` here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sshfleet.errors import ProtoError, UsageError

if TYPE_CHECKING:
    from sshfleet._agent import Agent

# name -> (module, class): the agents that ship with sshfleet. ExecAgent is the hand-extended client.
BUILTIN_AGENTS: dict[str, tuple[str, str]] = {
    "sysinfo": ("agents.sysinfo", "SysinfoAgent"),
    "exec": ("agents.exec_agent", "ExecAgent"),
    "tcpdump": ("agents.tcpdump_agent", "TcpDumpAgent"),
    "http_server": ("agents.http_server_agent", "HttpServerAgent"),
    "http_client": ("agents.http_client_agent", "HttpClientAgent"),
}


def _normal(name: str) -> str:
    """``SysinfoAgent``, ``sysinfo``, ``http-server``, ``HttpServer`` all compare equal to their entry."""
    text = name.lower().replace("-", "").replace("_", "")
    return text[: -len("agent")] if text.endswith("agent") and text != "agent" else text


def builtin_name(name: str) -> str | None:
    """The BUILTIN_AGENTS key ``name`` means, or None."""
    wanted = _normal(name)
    for key, (_, cls) in BUILTIN_AGENTS.items():
        if wanted in (_normal(key), _normal(cls)):
            return key
    return None


def is_proto_path(name: str) -> bool:
    return name.endswith(".proto") or "/" in name


def agent_key(name: str, agent_class: type[Agent]) -> str:
    """The short name the shell lists an agent under: the built-in's key, else the proto's stem."""
    if is_proto_path(name):
        return Path(name).stem
    return builtin_name(name) or name


def resolve_agent(name: str) -> type[Agent]:
    """The agent class for a built-in's name or a ``.proto`` path (its ``NAME_servicer.py`` beside it).

    Raises UsageError for an unknown name, ProtoError for a proto that cannot be read or compiled."""
    if is_proto_path(name):
        from sshfleet._codegen import load_agent

        if not Path(name).is_file():
            raise ProtoError(f"{name}: no such .proto file")
        return load_agent(name)
    key = builtin_name(name)
    if key is None:
        known = ", ".join(BUILTIN_AGENTS)
        raise UsageError(f"unknown agent {name!r}: give a built-in agent ({known}) or a path to a .proto")
    module_name, class_name = BUILTIN_AGENTS[key]
    module = importlib.import_module(module_name)
    agent_class: type[Agent] = getattr(module, class_name)
    return agent_class


def service_of(agent_class: type[Agent]) -> Any:
    """The agent's ServiceDescriptor, from its pb2 module."""
    short = agent_class._service_name.rsplit(".", 1)[-1]
    return agent_class._pb2.DESCRIPTOR.services_by_name[short]


def method_of(agent_class: type[Agent], name: str) -> Any:
    """The MethodDescriptor ``name``; UsageError naming the methods there are, with a near miss."""
    import difflib

    service = service_of(agent_class)
    method = service.methods_by_name.get(name)
    if method is None:
        names = list(service.methods_by_name)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"{agent_class.__name__} has no method {name!r}{hint} (methods: {', '.join(names)})")
    return method
