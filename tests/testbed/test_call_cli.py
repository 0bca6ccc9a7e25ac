"""``sshfleet call`` against real sshd: the per-host table, --json, streaming, and exit statuses that follow the
hosts' outcomes (0 all ok, 1 a call failed, 3 a host unreachable, 2 usage), run in-process through ``main``."""

from __future__ import annotations

import json
import re

import pytest

from sshfleet._cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main

pytestmark = pytest.mark.testbed


ECHO_PROTO = """\
syntax = "proto3";
package shellecho;
// Says back what it is told.
service ShellEcho {
    // Answer with the text, upper-cased when asked, and the sum of the numbers.
    rpc Say(SayArgs) returns (SayReply) {}
}
enum Case {
    KEEP = 0;
    UPPER = 1;
}
message SayArgs {
    string text = 1;
    Case case = 2;
    repeated int32 numbers = 3;
}
message SayReply {
    bool success = 1;
    string text = 2;
    int32 total = 3;
}
"""

ECHO_SERVICER = """\
try:
    from . import shellecho_pb2 as pb
    from . import shellecho_pb2_grpc as pb_grpc
except ImportError:
    import shellecho_pb2 as pb
    import shellecho_pb2_grpc as pb_grpc


def AddServicer(server):
    pb_grpc.add_ShellEchoServicer_to_server(Servicer(), server)


class Servicer(pb_grpc.ShellEchoServicer):
    def Say(self, request, context):
        text = request.text.upper() if request.case == pb.UPPER else request.text
        return pb.SayReply(success=True, text=text, total=sum(request.numbers))
"""


def write_echo_agent(directory) -> str:
    """An agent of the user's own: shellecho.proto with its shellecho_servicer.py beside it; the proto's path."""
    (directory / "shellecho.proto").write_text(ECHO_PROTO)
    (directory / "shellecho_servicer.py").write_text(ECHO_SERVICER)
    return str(directory / "shellecho.proto")


def call(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["call", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def bed_args(bed, *extra: str) -> list[str]:
    return ["-i", str(bed.inventory), "-F", str(bed.ssh_config), *extra]


def test_json_has_every_selected_host_and_exit_0(testbed, capsys):
    code, out, err = call(capsys, *bed_args(testbed, "node01:node03"), "sysinfo", "Uname", "--json")
    assert code == EXIT_OK, err
    results = json.loads(out)
    assert list(results) == ["node01", "node03"]
    for host, entry in results.items():
        assert entry["ok"] is True and entry["status"] == "ok"
        assert entry["reply"]["nodename"] == host  # each reply came from its own host


def test_table_has_one_row_per_host(testbed, capsys):
    code, out, err = call(capsys, *bed_args(testbed, "odd"), "SysinfoAgent", "Sleep", "seconds=0.01")
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["host", "status"]
    rows = [line.split() for line in lines if line.startswith("node")]
    assert [row[:2] for row in rows] == [["node01", "ok"], ["node03", "ok"], ["node05", "ok"], ["node07", "ok"]]
    assert all("comment='slept 0.01 s'" in line for line in lines if line.startswith("node"))
    assert all(re.search(r" \d+\.\d{3}s$", line.rstrip()) for line in lines if line.startswith("node"))  # time
    assert lines[-1].startswith("4 hosts: 4 ok in ")


def test_a_failed_call_is_exit_1_with_the_remote_error(testbed, capsys):
    code, out, _ = call(capsys, *bed_args(testbed, "node02"), "sysinfo", "Fail", "message=boom here", "--json")
    assert code == EXIT_FAILED
    entry = json.loads(out)["node02"]
    assert entry["ok"] is False and entry["status"] == "failed"
    assert entry["error"]["kind"] == "call_failed" and "RuntimeError: boom here" in entry["error"]["remote_traceback"]


def test_an_unreachable_host_is_exit_3_and_the_others_still_answer(testbed, capsys):
    argv = ["-H", "node01,nosuch.invalid", "-F", str(testbed.ssh_config), "--connect-timeout", "2"]
    code, out, _ = call(capsys, *argv, "sysinfo", "Uname")
    assert code == EXIT_UNREACHABLE
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith(("node01", "nosuch"))}
    assert rows == {"node01": "ok", "nosuch.invalid": "unreachable"}


def test_server_streaming_prints_each_message_with_its_host(testbed, capsys):
    code, out, err = call(capsys, *bed_args(testbed, "node04"), "sysinfo", "Count", "n=3", "size=2")
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [
        ["node04:", "index=0"],
        ["node04:", "index=1"],
        ["node04:", "index=2"],
    ]
    assert lines[-1].startswith("1 host: 1 ok in ")


def test_an_agent_from_a_proto_path_with_enum_and_list_values(testbed, capsys, tmp_path):
    proto = write_echo_agent(tmp_path)
    words = [proto, "Say", "text=hi there", "case=UPPER", "numbers=[1, 2, 39]", "--json"]
    code, out, err = call(capsys, *bed_args(testbed, "node01:node02"), *words)
    assert code == EXIT_OK, err
    results = json.loads(out)
    assert {host: entry["reply"] for host, entry in results.items()} == {
        "node01": {"success": True, "text": "HI THERE", "total": 42},
        "node02": {"success": True, "text": "HI THERE", "total": 42},
    }


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["sysinfo", "Unmae"], "has no method 'Unmae'; did you mean 'Uname'?"),
        (["sysinfo", "Sleep", "secs=1"], "no field 'secs'; fields: seconds"),
        (["sysinfo", "Sleep", "seconds=[1,"], "field 'seconds': '[1,' is not a value"),
        (["sysinfo", "Sleep", "seconds='x'"], "field 'seconds' expects double, got str 'x'"),
        (["nosuchagent", "Uname"], "unknown agent 'nosuchagent'"),
        (["sysinfo"], "give AGENT Method"),
    ],
)
def test_usage_errors_are_exit_2_before_any_connection(testbed, capsys, words, message):
    # A host that cannot exist: reaching the network at all would make this exit 3, not 2.
    code, out, err = call(capsys, "-H", "nosuch.invalid", *words)
    assert code == EXIT_USAGE
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("sshfleet call: ") and message in err, err


def test_a_proto_that_does_not_compile_is_exit_2(testbed, capsys, tmp_path):
    proto = tmp_path / "broken.proto"
    proto.write_text('syntax = "proto3";\nservice Broken { rpc Go(Nope) returns (Nope); }\n')
    code, out, err = call(capsys, "-H", "nosuch.invalid", str(proto), "Go")
    assert code == EXIT_USAGE and out == ""
    assert err.startswith("sshfleet call: ") and "broken.proto" in err
