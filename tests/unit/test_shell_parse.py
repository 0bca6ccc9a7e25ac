"""Pure parsing of shell lines and ``field=value`` arguments (sshfleet/_cli/_shell_parse.py), against the
built-in agents' real proto descriptors."""

from __future__ import annotations

import re

import pytest

from agents import exec_pb2, sysinfo_pb2
from sshfleet._cli._shell_parse import (
    classify_line,
    parse_fields,
    parse_value,
    split_assignments,
    split_call_words,
    split_target,
    split_words,
)
from sshfleet.errors import UsageError

SYSINFO = sysinfo_pb2.DESCRIPTOR.services_by_name["SysinfoAgent"]
EXEC = exec_pb2.DESCRIPTOR.services_by_name["ExecAgent"]


def field(message, name):
    return message.DESCRIPTOR.fields_by_name[name]


def test_split_words_keeps_literals_whole():
    line = "Run argv=['ls', '-l /tmp'] env={'A': '1 2'}  cwd=\"/a b\""
    assert split_words(line) == ["Run", "argv=['ls', '-l /tmp']", "env={'A': '1 2'}", 'cwd="/a b"']


def test_comments_start_at_a_word_beginning_with_a_hash():
    assert split_words("use odd   # the odd ones") == ["use", "odd"]
    assert split_words("Fail message='# not a comment' x=a#b") == ["Fail", "message='# not a comment'", "x=a#b"]
    assert classify_line("use +node02  # add one", ["use"]).rest == "+node02"


def test_split_words_escapes_inside_quotes():
    assert split_words(r"x='it\'s here' y=2") == [r"x='it\'s here'", "y=2"]


@pytest.mark.parametrize(
    ("line", "message"),
    [("a='open", "unterminated string"), ("a=[1, 2", "unclosed '['"), ("a=1]", "unbalanced ']'"), ("a={1]", "']'")],
)
def test_split_words_errors(line, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        split_words(line)


def test_split_assignments():
    assert split_assignments(["a=1", "b=x=y", "c="]) == [("a", "1"), ("b", "x=y"), ("c", "")]
    with pytest.raises(UsageError, match="expected field=value, got 'oops'"):
        split_assignments(["oops"])
    with pytest.raises(UsageError, match="given twice"):
        split_assignments(["a=1", "a=2"])


def test_values_are_python_literals():
    seconds = field(sysinfo_pb2.SleepArgs, "seconds")
    assert parse_value("2.5", seconds) == 2.5
    assert parse_value("[1, {'a': (2,)}]") == [1, {"a": (2,)}]
    with pytest.raises(UsageError, match=r"field 'seconds': '1\.\.2' is not a value"):
        parse_value("1..2", seconds)


def test_literals_are_never_executed():
    with pytest.raises(UsageError, match="is not a value"):
        parse_value("__import__('os').system('true')")


def test_bare_words_follow_the_field_type():
    message = field(sysinfo_pb2.FailArgs, "message")
    assert parse_value("hello", message) == "hello"
    assert parse_value("42", message) == "42"  # a string field takes the text as typed
    assert parse_value("'quoted'", message) == "quoted"
    stdin = field(exec_pb2.RunRequest, "stdin")
    assert parse_value("abc", stdin) == b"abc"
    assert parse_value("b'\\x00'", stdin) == b"\x00"
    flag = field(exec_pb2.RunRequest, "stdin_open")
    assert parse_value("true", flag) is True and parse_value("False", flag) is False
    signal = field(exec_pb2.SessionInput, "signal")
    assert parse_value("SIGINT", signal) == "SIGINT"  # the name; build_request checks it is a value


def test_parse_fields_names_the_method_and_the_fields_there_are():
    sleep = SYSINFO.methods_by_name["Sleep"]
    assert parse_fields(sleep, ["seconds=3"]) == {"seconds": 3}
    with pytest.raises(UsageError, match=r"^SysinfoAgent\.Sleep: no field 'secs'; fields: seconds$"):
        parse_fields(sleep, ["secs=3"], agent="SysinfoAgent")
    run = EXEC.methods_by_name["Run"]
    got = parse_fields(run, ["argv=['ls', '-l']", "env={'A': 'b'}", "timeout=5"])
    assert got == {"argv": ["ls", "-l"], "env": {"A": "b"}, "timeout": 5}


def test_classify_line():
    builtins = ["use", "hosts", "=", "?"]
    assert classify_line("  ", builtins).kind == "empty"
    assert classify_line("# note", builtins).kind == "empty"
    bang = classify_line("!uname -n | tr a-z A-Z", builtins)
    assert (bang.kind, bang.rest) == ("bang", "uname -n | tr a-z A-Z")
    assert classify_line("!!", builtins).word == "!!"
    use = classify_line("use web:&prod", builtins)
    assert (use.kind, use.word, use.args, use.rest) == ("builtin", "use", ("web:&prod",), "web:&prod")
    assert classify_line("=", builtins).kind == "builtin"
    called = classify_line("sysinfo.Sleep seconds=1", builtins)
    assert (called.kind, called.word, called.args) == ("call", "sysinfo.Sleep", ("seconds=1",))


def test_split_target():
    assert split_target("Uname") == (None, "Uname")
    assert split_target("sysinfo.Uname") == ("sysinfo", "Uname")


def test_split_call_words_tells_a_pattern_from_an_agent():
    words = split_call_words(["web", "sysinfo", "Sleep", "seconds=1"], with_inventory=True)
    assert (words.pattern, words.agent, words.method, words.assignments) == ("web", "sysinfo", "Sleep", ("seconds=1",))
    words = split_call_words(["sysinfo", "Sleep", "seconds=1"], with_inventory=True)
    assert (words.pattern, words.agent, words.method) == (None, "sysinfo", "Sleep")
    words = split_call_words(["all", "x/my.proto", "Go"], with_inventory=True)
    assert (words.pattern, words.agent) == ("all", "x/my.proto")
    words = split_call_words(["sysinfo", "Uname"], with_inventory=False)
    assert words.pattern is None
    with pytest.raises(UsageError, match="give AGENT Method"):
        split_call_words(["sysinfo", "seconds=1"], with_inventory=False)
