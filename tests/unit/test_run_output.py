"""``sshfleet run`` output logic: line splitting and prefixes, results, gathering, summary, argument parsing."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from sshfleet._cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, build_parser
from sshfleet._cli._output import (
    LineBuffer,
    LiveLines,
    Progress,
    classify,
    exit_status,
    gather,
    make_prefixes,
    render_gather,
    summary_lines,
    to_json,
)
from sshfleet._cli.run import check_command, split_hosts
from sshfleet.errors import ChannelError, ConnectError, UsageError


def reply(exit_code=0, signal=0, timed_out=False, started=True, comment=""):
    return SimpleNamespace(exit_code=exit_code, signal=signal, timed_out=timed_out, started=started, comment=comment)


# --- lines ----------------------------------------------------------------------------------------------


def test_partial_lines_wait_for_their_newline_per_host_and_stream():
    buf = LineBuffer()
    assert buf.feed("a", "stdout", b"hel") == []
    assert buf.feed("b", "stdout", b"other\nhal") == [b"other"]
    assert buf.feed("a", "stderr", b"err") == []
    assert buf.feed("a", "stdout", b"lo\nwor") == [b"hello"]
    assert buf.feed("a", "stdout", b"ld\n\nx") == [b"world", b""]
    assert buf.flush("a") == [("stdout", b"x"), ("stderr", b"err")]
    assert buf.flush("a") == []
    assert buf.flush("b") == [("stdout", b"hal")]


def test_a_line_split_inside_a_utf8_character_stays_whole():
    buf = LineBuffer()
    data = "é\n".encode()
    assert buf.feed("a", "stdout", data[:1]) == []
    assert buf.feed("a", "stdout", data[1:]) == ["é".encode()]


def test_crlf_from_a_pty_is_stripped_only_when_asked():
    assert LineBuffer(strip_cr=True).feed("a", "stdout", b"x\r\ny\r\n") == [b"x", b"y"]
    assert LineBuffer().feed("a", "stdout", b"x\r\n") == [b"x\r"]


def test_prefixes_are_padded_to_the_longest_host():
    prefixes = make_prefixes(["n1", "node10"], False, False)
    assert prefixes["n1"]["stdout"] == b"n1:     "
    assert prefixes["node10"]["stderr"] == b"node10: "


def test_coloured_prefixes_carry_escape_codes_and_the_same_text():
    prefixes = make_prefixes(["n1", "node10"], True, False)
    assert prefixes["n1"]["stdout"].startswith(b"\x1b[") and b"n1:     " in prefixes["n1"]["stdout"]
    assert prefixes["n1"]["stderr"] == b"n1:     "


def test_live_lines_go_to_their_stream_with_prefixes_and_partial_lines_end_with_the_host():
    out, err = io.BytesIO(), io.BytesIO()
    cleared = []
    live = LiveLines(["a", "bb"], out, err, before_write=lambda: cleared.append(1))
    live.feed("a", "stdout", b"one\ntw")
    live.feed("bb", "stderr", b"oops\n")
    live.feed("a", "stdout", b"o")
    assert out.getvalue() == b"a:  one\n"
    live.end("a")
    live.end("bb")
    assert out.getvalue() == b"a:  one\na:  two\n"
    assert err.getvalue() == b"bb: oops\n"
    assert len(cleared) == 3


# --- results --------------------------------------------------------------------------------------------


def test_classify_every_kind_of_outcome():
    assert classify("h", reply()).status == "ok"
    failed = classify("h", reply(exit_code=2))
    assert (failed.status, failed.label, failed.exit_code) == ("failed", "failed (exit 2)", 2)
    killed = classify("h", reply(exit_code=130, signal=2))
    assert (killed.status, killed.label, killed.signal) == ("failed", "failed (killed by SIGINT)", 2)
    late = classify("h", reply(exit_code=143, signal=15, timed_out=True, comment="timed out after 1s"))
    assert (late.status, late.label, late.timed_out) == ("failed", "failed (timed out after 1s)", True)
    missing = classify("h", reply(exit_code=127, started=False, comment="nope: command not found"))
    assert (missing.status, missing.exit_code) == ("not_started", 127)
    assert missing.label == "could not start (nope: command not found)"
    down = classify("h", ConnectError("h", "timed out after 2s", phase="tcp"))
    assert (down.status, down.label) == ("unreachable", "unreachable (tcp: timed out after 2s)")
    assert down.error is not None and down.error["phase"] == "tcp"
    lost = classify("h", ChannelError("h", "the servicer's SSH channel closed"))
    assert (lost.status, lost.label) == ("unreachable", "connection lost (the servicer's SSH channel closed)")
    gone = classify("h", None)
    assert (gone.status, gone.exit_code) == ("interrupted", None)


def test_exit_status_unreachable_wins_over_failed():
    ok, bad = classify("a", reply()), classify("b", reply(exit_code=1))
    down = classify("c", ConnectError("c", "refused"))
    not_started = classify("d", reply(exit_code=127, started=False))
    assert exit_status([ok]) == EXIT_OK
    assert exit_status([ok, bad]) == EXIT_FAILED
    assert exit_status([ok, bad, down]) == EXIT_UNREACHABLE
    assert exit_status([ok, not_started]) == EXIT_UNREACHABLE


def test_summary_folds_hosts_with_the_same_label():
    results = [classify(f"node{i:02d}", reply(exit_code=1 if i == 2 else 0)) for i in range(1, 9)]
    results.append(classify("node09", ConnectError("node09", "no route", phase="tcp")))
    lines = summary_lines(results, 1.5)
    assert lines == [
        "node[01,03-08]: ok",
        "node02: failed (exit 1)",
        "node09: unreachable (tcp: no route)",
        "9 hosts: 7 ok, 1 failed, 1 unreachable in 1.50s",
    ]


def test_json_has_the_documented_fields():
    result = classify("h", reply(exit_code=3))
    result.stdout += b"out\n"
    result.stderr += b"\xff\n"
    data = json.loads(json.dumps(to_json([result])))
    assert data == {
        "h": {
            "status": "failed",
            "exit_code": 3,
            "signal": 0,
            "timed_out": False,
            "stdout": "out\n",
            "stderr": "\ufffd\n",
            "error": None,
        }
    }


def test_progress_draws_in_place_only_when_enabled_and_clears():
    shown = io.StringIO()
    progress = Progress(shown, 10, enabled=True, after=0)
    progress.draw(3, ["node04", "node05"])
    progress.draw(3, ["node04", "node05"])  # unchanged: not redrawn
    assert shown.getvalue().startswith("\r\x1b[K[3/10 done, ")
    assert shown.getvalue().endswith("s] waiting for node[04-05]") and shown.getvalue().count("\r") == 1
    progress.clear()
    assert shown.getvalue().endswith("\r\x1b[K")
    quiet = io.StringIO()
    Progress(quiet, 10, enabled=False, after=0).draw(1)
    Progress(quiet, 10, enabled=True, after=3600).draw(1)
    assert quiet.getvalue() == ""


# --- gather ---------------------------------------------------------------------------------------------


def _result(host, stdout=b"", stderr=b"", code=0):
    result = classify(host, reply(exit_code=code))
    result.stdout += stdout
    result.stderr += stderr
    return result


def test_gather_groups_identical_output_and_exit():
    results = [
        _result("node01", b"same\n"),
        _result("node02", b"other\n"),
        _result("node03", b"same\n"),
        _result("node04", b"same\n", code=1),
        _result("node07", b"same\n"),
        _result("node05", b"same\n", b"warn\n"),
    ]
    groups = [(hosts, r.stdout) for hosts, r in gather(results)]
    assert groups == [
        (["node01", "node03", "node07"], b"same\n"),
        (["node02"], b"other\n"),
        (["node04"], b"same\n"),
        (["node05"], b"same\n"),
    ]


def test_render_gather_folds_host_names_clush_style():
    results = [_result(f"node{i:02d}", b"v1\n") for i in (1, 2, 3, 4, 7)]
    results.append(_result("node05", b"v2", b"err\n", code=2))
    results.append(_result("node06"))
    out, err = io.BytesIO(), io.BytesIO()
    render_gather(results, out, err)
    text = out.getvalue().decode()
    rule = "-" * len("node[01-04,07] (5)")
    assert text.startswith(f"{rule}\nnode[01-04,07] (5)\n{rule}\nv1\n")
    assert "node05 failed (exit 2)\n" in text and text.endswith("v2\n")
    assert "node06" not in text  # ok and silent: only the summary names it
    rule = "-" * len("node05 failed (exit 2)")
    assert err.getvalue().decode() == f"{rule}\nnode05 failed (exit 2)\n{rule}\nerr\n"


# --- command line ---------------------------------------------------------------------------------------


def test_hosts_split_on_commas_outside_ranges():
    assert split_hosts("a,node[01-03,07],root@b:2222,") == ["a", "node[01-03,07]", "root@b:2222"]


def parse(*argv):
    return build_parser().parse_args(["run", *argv])


def test_everything_after_double_dash_is_the_command_verbatim():
    args = parse("-i", "inv", "--", "printf", "%s\n", "a b", "-i", "--", "--json")
    assert args.pattern is None and args.inventory == "inv" and not args.json
    assert args.argv == ["printf", "%s\n", "a b", "-i", "--", "--json"]
    args = parse("-i", "inv", "web", "--json", "--", "uptime")
    assert (args.pattern, args.json, args.argv) == ("web", True, ["uptime"])


def test_shell_command_and_missing_command():
    args = parse("-H", "a,b", "-c", "echo $HOSTNAME")
    assert args.argv is None and args.shell == "echo $HOSTNAME"
    check_command(args)
    with pytest.raises(UsageError, match="put it after --"):
        check_command(parse("-i", "inv", "uptime"))
    with pytest.raises(UsageError, match="not both"):
        check_command(parse("-H", "a", "-c", "x", "--", "y"))


def test_gather_json_and_outdir_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        parse("-H", "a", "-b", "--json", "--", "true")
    assert "not allowed with" in capsys.readouterr().err
