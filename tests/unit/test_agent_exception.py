"""Each generated agent's ``XAgentException``: what ``raise_for_status()`` of the agent's Responses raises, so a
script can ``except TcpDumpAgentException`` as the seed's scripts do."""

from __future__ import annotations

import importlib

import pytest

import sshfleet
from agents import tcpdump_agent_pb2
from agents.http_server_agent import HttpServerAgentException
from agents.tcpdump_agent import TcpDumpAgent, TcpDumpAgentException
from sshfleet._responses import Responses
from sshfleet.errors import AgentException, ConnectError, FleetError

BUILT_IN = {
    "agents.exec": "ExecAgent",
    "agents.exec_agent": "ExecAgent",  # the hand-written ExecAgent on top of the generated one
    "agents.http_client_agent": "HttpClientAgent",
    "agents.http_server_agent": "HttpServerAgent",
    "agents.sysinfo": "SysinfoAgent",
    "agents.tcpdump_agent": "TcpDumpAgent",
}


@pytest.mark.parametrize(("module_name", "class_name"), BUILT_IN.items())
def test_every_built_in_agent_raises_its_own_exception(module_name: str, class_name: str) -> None:
    module = importlib.import_module(module_name)
    agent, exception = getattr(module, class_name), getattr(module, f"{class_name}Exception")
    assert agent._exception is exception
    assert exception is not AgentException
    assert issubclass(exception, AgentException) and issubclass(exception, FleetError)


def test_the_built_in_agents_exceptions_are_distinct() -> None:
    exceptions = {importlib.import_module(m).__dict__[f"{c}Exception"] for m, c in BUILT_IN.items()}
    assert len(exceptions) == len(set(BUILT_IN.values()))


def failed_capture() -> Responses:
    outcomes = {
        "vrouter": tcpdump_agent_pb2.Response(success=True, comment="listening"),
        "ct1": tcpdump_agent_pb2.Response(success=False, comment="tcpdump: permission denied"),
        "ct2": ConnectError("ct2", "connection refused", phase="tcp"),
    }
    # What TcpDumpAgent.StartCollection returns: the agent builds every Responses with its own exception.
    return Responses("StartCollection", outcomes, error=TcpDumpAgent._exception)


def test_except_tcpdump_agent_exception_catches_a_failed_call() -> None:
    responses = failed_capture()
    try:
        responses.raise_for_status()
    except HttpServerAgentException:
        pytest.fail("another agent's exception caught TcpDumpAgent's failure")
    except TcpDumpAgentException as exc:
        caught = exc
    else:
        pytest.fail("raise_for_status() raised nothing")
    assert caught.responses is responses
    assert list(caught.responses) == ["vrouter", "ct1", "ct2"]
    assert list(caught.responses.failed) == ["ct1", "ct2"]
    assert caught.responses["ct1"].comment == "tcpdump: permission denied"
    assert caught.responses["vrouter"].success
    assert "2 of 3 hosts failed: ct1, ct2" in str(caught)


def test_the_broader_handlers_still_catch_it() -> None:
    for handler in (AgentException, FleetError, sshfleet.SshFleetError):
        with pytest.raises(handler):
            failed_capture().raise_for_status()
