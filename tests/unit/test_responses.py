"""Responses: per-host outcomes, success rules, status text, JSON view (pure logic)."""

from __future__ import annotations

import json

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from sshfleet._responses import Responses
from sshfleet.errors import AgentException, CallError, CallTimeout, ConnectError, FleetError


def _message_classes():
    fdp = descriptor_pb2.FileDescriptorProto(name="resp_test.proto", package="resp_test", syntax="proto3")
    reply = fdp.message_type.add(name="Response")
    reply.field.add(name="success", number=1, type=8, label=1)  # bool
    reply.field.add(name="comment", number=2, type=9, label=1)  # string
    plain = fdp.message_type.add(name="Plain")
    plain.field.add(name="value", number=1, type=5, label=1)  # int32
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("resp_test.Response")), get(pool.FindMessageTypeByName("resp_test.Plain"))


Response, Plain = _message_classes()


def test_all_ok_is_success_and_iterates_in_host_order():
    r = Responses("Configure", {"b": Response(success=True), "a": Response(success=True, comment="fine")})
    assert r.success()
    assert list(r) == ["b", "a"]
    assert r.failed == {} and r.errors == {}
    assert "a  ok: fine" in r.status()


def test_success_false_reply_fails_but_is_not_an_error():
    r = Responses("Configure", {"a": Response(success=True), "b": Response(success=False, comment="no tcpdump")})
    assert not r.success()
    assert list(r.failed) == ["b"]
    assert r.errors == {}
    assert list(r.succeeded) == ["a"]
    assert "b  FAILED: no tcpdump" in r.status()


def test_reply_without_success_field_counts_as_ok():
    r = Responses("Get", {"a": Plain(value=3)})
    assert r.success() and r["a"].value == 3


def test_host_errors_are_kept_next_to_successes():
    err = ConnectError("b", "connection refused", phase="tcp")
    tb = "Traceback (most recent call last):\n  ...\nRuntimeError: boom"
    call = CallError("c", "Fail", "UNKNOWN", "RuntimeError: boom", tb)
    r = Responses("Fail", {"a": Response(success=True), "b": err, "c": call})
    assert not r.success()
    assert set(r.errors) == {"b", "c"}
    assert r["a"].success
    status = r.status()
    assert "b  UNREACHABLE: connection refused" in status
    assert "c  CALL FAILED: Fail failed: UNKNOWN" in status
    assert "RuntimeError: boom" in status and "Traceback" in status


def test_to_dict_is_json_ready():
    r = Responses(
        "Sleep",
        {
            "a": Response(success=True, comment="x"),
            "b": CallTimeout("b", "Sleep", "DEADLINE_EXCEEDED", "late"),
        },
    )
    d = json.loads(json.dumps(r.to_dict()))
    assert d["a"] == {"ok": True, "reply": {"success": True, "comment": "x"}}
    assert d["b"]["ok"] is False
    assert d["b"]["error"]["kind"] == "timeout" and d["b"]["error"]["code"] == "DEADLINE_EXCEEDED"


def test_raise_for_status_carries_every_outcome():
    r = Responses("X", {"a": Response(success=True), "b": Response(success=False)})
    with pytest.raises(FleetError) as info:
        r.raise_for_status()
    assert type(info.value) is FleetError  # not an agent's call: the plain FleetError
    assert info.value.responses is r
    assert "1 of 2 hosts failed: b" in str(info.value)
    ok = Responses("X", {"a": Response(success=True)})
    assert ok.raise_for_status() is ok


class SomeAgentException(AgentException):
    pass


def test_raise_for_status_raises_the_given_error_with_every_outcome():
    down = ConnectError("c", "connection refused", phase="tcp")
    outcomes = {"a": Response(success=True), "b": Response(success=False, comment="no tcpdump"), "c": down}
    r = Responses("StartCollection", outcomes, error=SomeAgentException)
    with pytest.raises(SomeAgentException) as info:
        r.raise_for_status()
    assert info.value.responses is r
    assert dict(info.value.responses) == outcomes  # the hosts that succeeded too
    assert list(info.value.responses.failed) == ["b", "c"]
    assert "2 of 3 hosts failed: b, c" in str(info.value)
    ok = Responses("StartCollection", {"a": Response(success=True)}, error=SomeAgentException)
    assert ok.raise_for_status() is ok
