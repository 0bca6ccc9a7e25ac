"""Rows, statuses and exit codes of a call's Responses (sshfleet/_cli/_shell_render.py); pure logic."""

from __future__ import annotations

import io
import json

from rich.console import Console

from agents import exec_pb2, sysinfo_pb2
from sshfleet._cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from sshfleet._cli._shell_render import error_text, exit_status, print_table, reply_text, rows, stream_line, to_json
from sshfleet._responses import Responses
from sshfleet.errors import BootstrapError, CallError, CallTimeout, ConnectError


def ok(comment: str = "done") -> sysinfo_pb2.Response:
    return sysinfo_pb2.Response(success=True, comment=comment)


def test_reply_text_shows_fields_but_success():
    assert reply_text(ok("slept 1 s")) == "comment='slept 1 s'"
    assert reply_text(sysinfo_pb2.Chunk(index=0, data=b"ab")) == "index=0  data=b'ab'"  # 0 is shown
    assert reply_text(sysinfo_pb2.UnameReply(success=True, nodename="n1", pid=7)) == "nodename=n1  pid=7"
    reply = exec_pb2.SessionInput(signal=exec_pb2.SIGINT)
    assert "signal=SIGINT" in reply_text(reply)  # enums by name


def test_statuses_and_exit_codes():
    assert exit_status(Responses("Sleep", {"a": ok(), "b": ok()})) == EXIT_OK
    failed_reply = sysinfo_pb2.Response(success=False, comment="no")
    assert exit_status(Responses("Sleep", {"a": ok(), "b": failed_reply})) == EXIT_FAILED
    call_error = CallError("b", "Fail", "UNKNOWN", "RuntimeError: x")
    assert exit_status(Responses("Fail", {"a": ok(), "b": call_error})) == EXIT_FAILED
    assert exit_status(Responses("Sleep", {"a": CallTimeout("a", "Sleep", "DEADLINE_EXCEEDED", "")})) == EXIT_FAILED
    down = ConnectError("c", "connection refused", "tcp")
    assert exit_status(Responses("Fail", {"b": call_error, "c": down})) == EXIT_UNREACHABLE
    assert exit_status(Responses("Sleep", {"d": BootstrapError("d", "no python3")})) == EXIT_UNREACHABLE


def test_rows_one_per_host_or_gathered():
    down = ConnectError("n3", "connection refused", "tcp")
    responses = Responses("Sleep", {"n1": ok(), "n2": ok(), "n3": down, "n4": ok()})
    plain = rows(responses)
    assert [(r.label, r.status, r.text) for r in plain] == [
        ("n1", "ok", "comment=done"),
        ("n2", "ok", "comment=done"),
        ("n3", "unreachable", "tcp: connection refused"),
        ("n4", "ok", "comment=done"),
    ]
    gathered = rows(responses, gathered=True)
    assert [(r.label, r.status) for r in gathered] == [("n[1-2,4] (3)", "ok"), ("n3", "unreachable")]


def test_table_and_json():
    error = CallError("n2", "Fail", "UNKNOWN", "RuntimeError: boom\nmore", "Traceback ...")
    responses = Responses("Fail", {"n1": ok(), "n2": error})
    out = io.StringIO()
    print_table(Console(file=out, width=120, color_system=None), responses, 0.5)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:2] == ["host", "status"]
    assert any(line.split()[:3] == ["n2", "failed", "UNKNOWN:"] and "RuntimeError: boom" in line for line in lines)
    assert "more" not in out.getvalue()  # one line per host
    assert lines[-1] == "2 hosts: 1 ok, 1 failed in 0.50s"
    data = json.loads(to_json(responses))
    assert data["n1"] == {"ok": True, "status": "ok", "reply": {"success": True, "comment": "done"}}
    assert data["n2"]["status"] == "failed" and data["n2"]["error"]["remote_traceback"] == "Traceback ..."


def test_stream_line():
    assert stream_line("n1", sysinfo_pb2.Chunk(index=2), 4) == "n1:   index=2"
    line = stream_line("node1", CallError("node1", "Count", "CANCELLED", "gone"), 5)
    assert line == "node1: ERROR CANCELLED: gone"


def test_times_per_host_and_the_slowest_of_a_gathered_row():
    down = ConnectError("n3", "connection refused", "tcp")
    responses = Responses("Sleep", {"n1": ok(), "n2": ok(), "n3": down})
    times = {"n1": 0.25, "n2": 0.5}
    assert [r.seconds for r in rows(responses, times=times)] == [0.25, 0.5, None]
    assert [r.seconds for r in rows(responses, gathered=True, times=times)] == [0.5, None]
    out = io.StringIO()
    print_table(Console(file=out, width=120, color_system=None), responses, 0.5, times=times)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[-1] == "time"
    assert [line.split()[-1] for line in lines[2:5]] == ["0.250s", "0.500s", "-"]


def test_brackets_in_errors_and_host_names_are_printed_as_they_are():
    down = ConnectError("web[a]", "[Errno 111] Connection refused", "tcp")
    out = io.StringIO()
    print_table(Console(file=out, width=120, color_system=None), Responses("Sleep", {"web[a]": down}), 0.1)
    assert "web[a]" in out.getvalue() and "tcp: [Errno 111] Connection refused" in out.getvalue()


def test_a_host_key_error_speaks_the_command_lines_language():
    from sshfleet.errors import HostKeyError

    error = HostKeyError(
        "node01", "no host key known for 10.0.0.1 (...); add it with ssh-keyscan or use host_key_policy='accept-new'"
    )
    text = error_text(error)
    assert "--accept-new" in text and "host_key_policy" not in text
