"""Tab completion of the shell (sshfleet/_cli/_shell_complete.py) from the built-in agents' real descriptors,
with the shell's state given by a plain object: which words are offered where."""

from __future__ import annotations

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from agents import exec_pb2, sysinfo_pb2
from sshfleet._cli._shell_complete import ShellCompleter

SYSINFO = sysinfo_pb2.DESCRIPTOR.services_by_name["SysinfoAgent"]
EXEC = exec_pb2.DESCRIPTOR.services_by_name["ExecAgent"]


class Source:
    def commands(self):
        return ["hosts", "use", "load", "unload", "set", "help", "exit"]

    def methods(self):
        methods = {m.name: m for m in SYSINFO.methods}
        methods.update({f"sysinfo.{m.name}": m for m in SYSINFO.methods})
        methods.update({f"exec.{m.name}": m for m in EXEC.methods})
        return methods

    def loaded_names(self):
        return ["sysinfo", "exec"]

    def host_names(self):
        return ["node01", "node02", "web1"]

    def group_names(self):
        return ["all", "odd", "web"]


def offered(text: str) -> list[str]:
    completer = ShellCompleter(Source())
    document = Document(text, len(text))
    return [c.text for c in completer.get_completions(document, CompleteEvent(completion_requested=True))]


def test_first_word_is_a_command_or_a_method():
    assert offered("Un") == ["Uname"]
    assert offered("u") == ["use", "unload"]
    assert offered("sysinfo.S") == ["sysinfo.Sleep"]
    assert "exec.Run" in offered("exec.")


def test_fields_with_their_equals_sign_and_not_twice():
    assert offered("Sleep sec") == ["seconds="]
    assert offered("exec.Run ") == ["argv=", "shell=", "stdin=", "stdin_open=", "timeout=", "env=", "cwd=", "detach="]
    assert "argv=" not in offered("exec.Run argv=['ls'] ")
    assert offered("Sleep seconds=1 ") == []


def test_enum_values_and_bools():
    assert offered("exec.Session signal=SIGI") == ["SIGINT"]
    assert offered("exec.Run stdin_open=") == ["True", "False"]


def test_hosts_and_groups_after_use_in_every_part_of_a_pattern():
    assert offered("use w") == ["web", "web1"]
    assert offered("use +node") == ["node01", "node02"]
    assert offered("use -o") == ["odd"]
    assert offered("use web:!node0") == ["node01", "node02"]
    assert offered("use all:&o") == ["odd"]


def test_agents_settings_and_nothing_for_commands():
    assert offered("load sys") == ["sysinfo"]
    assert offered("load http") == ["http_server", "http_client"]
    assert offered("unload e") == ["exec"]
    assert offered("set o") == ["output"]
    assert offered("set output g") == ["gathered"]
    assert offered("help Sl") == ["Sleep"]
    assert offered("!una") == []  # a remote command line is the remote shell's business
