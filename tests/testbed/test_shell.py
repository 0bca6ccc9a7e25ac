"""``sshfleet shell`` driven through a real pseudo-terminal against the testbed: completion of methods, fields
and hosts, a call's per-host table, ``!cmd``, Ctrl-C cancelling a long call with the agent still usable,
one-line errors for bad input, and ``exit`` leaving every host clean (the leftover check after each test).

The pty is the shell's controlling terminal, so Ctrl-C is the byte 0x03 the terminal turns into SIGINT, as
when a person types it.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.testbed.test_call_cli import write_echo_agent

pytestmark = pytest.mark.testbed

SSHFLEET = str(Path(sys.executable).with_name("sshfleet"))
DEADLINE = 30.0  # seconds any expected output may take before the test fails instead of hanging
ANSI = re.compile(
    rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\x1b\][^\x07]*\x07|[\x00-\x08\x0e-\x1f]"
)
PROMPT = rb"sshfleet \S+ \(\d+\)> $"


def _controlling_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the pty on stdin."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """The shell running on a pty of ours; ``expect`` reads until a regex matches the text (escape codes and
    carriage returns removed) that came after the last match."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(
            [SSHFLEET, "shell", *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            preexec_fn=_controlling_terminal,
        )
        os.close(slave)
        self.raw = b""
        self.seen = 0  # how much of the cleaned text earlier expects consumed

    def text(self) -> str:
        return ANSI.sub(b"", self.raw).replace(b"\r", b"").decode("utf-8", "replace")

    def expect(self, pattern: str, deadline: float = DEADLINE) -> str:
        """The new text up to and including the first match of ``pattern``."""
        end = time.monotonic() + deadline
        regex = re.compile(pattern, re.M)
        while True:
            text = self.text()
            match = regex.search(text, self.seen)
            if match:
                got = text[self.seen : match.end()]
                self.seen = match.end()
                return got
            remaining = end - time.monotonic()
            assert remaining > 0, f"never saw {pattern!r}; got {text[self.seen :]!r}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the shell closed the terminal
                    chunk = b""
                assert chunk, f"the shell ended before {pattern!r}; got {text[self.seen :]!r}"
                self.raw += chunk

    def settle(self, quiet: float = 0.3) -> str:
        """Read until the shell has been silent for ``quiet`` seconds (prompt_toolkit computes completions
        as a background task: its redraws end when they are in); the new text."""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], quiet)
            if not ready:
                break
            chunk = os.read(self.master, 65536)
            assert chunk, f"the shell ended; got {self.text()[self.seen :]!r}"
            self.raw += chunk
        text = self.text()
        got, self.seen = text[self.seen :], len(text)
        return got

    def prompt(self) -> str:
        return self.expect(r"sshfleet \S+ \(\d+\)>")

    def send(self, data: str) -> None:
        os.write(self.master, data.encode())

    def line(self, text: str) -> str:
        """Type ``text`` and Enter; the output up to the next prompt (prompt_toolkit redraws the accepted
        line, prompt and all, before the command runs: that redraw is skipped first)."""
        self.send(text + "\r")
        self.expect(r"\(\d+\)>[^\n]*\n")
        return self.prompt()

    def exit(self) -> int:
        """Type ``exit``: the shell closes every agent; its exit status. Each test ends with it, inside the
        test, so that the leftover check that follows proves ``exit`` left every host clean."""
        self.send("exit\r")
        return self.close()

    def close(self) -> int:
        """Wait for the shell to end (killed if it does not within the deadline); its exit status."""
        try:
            return self.proc.wait(timeout=DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.master >= 0:
                os.close(self.master)
                self.master = -1


@pytest.fixture
def shell(testbed, tmp_path):
    """``shell(*extra)`` starts ``sshfleet shell -i <testbed inventory> ... *extra`` on a pty, at its prompt."""
    started: list[Terminal] = []
    env = {
        **os.environ,
        "TERM": "xterm",
        "PROMPT_TOOLKIT_NO_CPR": "1",  # nobody answers cursor-position requests here
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "NO_COLOR": "1",
    }

    def start(*extra: str, inventory: bool = True, bed=None) -> Terminal:
        bed = bed or testbed
        argv = [*(["-i", str(bed.inventory)] if inventory else []), "-F", str(bed.ssh_config), *extra]
        terminal = Terminal(argv, env)
        started.append(terminal)
        terminal.prompt()
        return terminal

    yield start
    for terminal in started:
        if terminal.master >= 0:  # the test failed before its exit: do not leave the shell running
            terminal.proc.kill()
            terminal.close()


def test_call_prints_a_row_per_host_and_exit_leaves_hosts_clean(shell, tmp_path):
    term = shell("node01:node02:node03", "--agent", "sysinfo")
    assert "sysinfo: ready on node[01-03] (3)" in term.text()
    out = term.line("Uname")
    rows = [line.split()[:2] for line in out.splitlines() if re.match(r"node0\d ", line)]
    assert rows == [["node01", "ok"], ["node02", "ok"], ["node03", "ok"]]
    for host in ("node01", "node02", "node03"):
        assert f"nodename={host}" in out
    assert "3 hosts: 3 ok in " in out
    out = term.line("agents")
    assert re.search(r"sysinfo\s+SysinfoAgent\s+node\[01-03\]", out)
    # calls follow the selection: the same servicers, only the selected hosts
    term.line("use node02")
    out = term.line("Uname")
    rows = [line.split()[:2] for line in out.splitlines() if re.match(r"node0\d ", line)]
    assert rows == [["node02", "ok"]] and "1 host: 1 ok in " in out
    term.line("use node01:node03")
    out = term.line("Uname")
    assert [line.split()[0] for line in out.splitlines() if re.match(r"node0\d ", line)] == ["node01", "node03"]
    assert term.exit() == 0
    assert "Uname" in (tmp_path / "state" / "sshfleet" / "history").read_text()  # history kept, XDG place


def test_completion_offers_methods_fields_enum_values_and_hosts(shell, tmp_path):
    term = shell("node01:node02", "--agent", "sysinfo")
    term.send("Un\t")  # method name
    assert "ame" in term.settle()
    out = term.line("")
    assert "2 hosts: 2 ok in " in out
    term.send("Sleep sec\t")  # field name, with its '='
    assert "onds=" in term.settle()
    out = term.line("0.01")
    assert "comment='slept 0.01 s'" in out
    out = term.line(f"load {write_echo_agent(tmp_path)}")  # an agent of one's own, from its .proto
    assert "shellecho: ready on node[01-02] (2)" in out
    term.send("Say case=UP\t")  # an enum value's name
    assert "PER" in term.settle()
    out = term.line(" text=hi numbers=[1, 2]")
    assert re.search(r"^node01\s+ok\s+text=HI\s+total=3\s", out, re.M), out
    term.send("use od\t")  # group name
    assert "d" in term.settle()
    assert "node01 (1 of 2 hosts)" in term.line("")  # odd: node01, node03, ...; this shell has node01:node02
    term.send("use +nod\t")  # host names: the common part is inserted, and a menu lists the candidates
    menu = term.settle()
    assert "e0" in menu and "node01" in menu and "node02" in menu
    out = term.line("2")
    assert "node[01-02] (2 of 2 hosts)" in out
    out = term.line("use -node02")
    assert "node01 (1 of 2 hosts)" in out
    assert term.exit() == 0


def test_bang_runs_on_each_selected_host_and_bang_bang_repeats(shell):
    term = shell()
    out = term.line("!uname -n")
    lines = sorted(line for line in out.splitlines() if re.fullmatch(r"node0\d:\s+node0\d", line.strip()))
    assert [line.split() for line in lines] == [[f"node0{i}:", f"node0{i}"] for i in range(1, 9)]
    assert "node[01-08]: ok" in out
    term.line("use node03")
    out = term.line("!!")
    assert re.search(r"^node03:\s+node03$", out, re.M) and "node01:" not in out
    assert term.exit() == 0


def test_ctrl_c_cancels_a_long_call_or_command_and_the_agent_stays_usable(shell):
    term = shell("node01:node02", "--agent", "sysinfo")
    term.send("Sleep seconds=300\r")
    term.expect(r"Sleep seconds=300\n")  # the line was accepted: the call is on its way
    time.sleep(0.5)  # let it reach the hosts (not an assertion: a Ctrl-C before that cancels as well)
    term.send("\x03")
    out = term.prompt()
    assert "interrupted: Sleep cancelled on node[01-02] (no answer yet); answered: none" in out
    out = term.line("Sleep seconds=0.01")
    assert "2 hosts: 2 ok in " in out
    term.send("Count n=100000000 size=1\r")  # a server stream that would run for a long while
    term.expect(r"node0[12]:\s+index=3")
    term.send("\x03")
    assert "interrupted: the call was cancelled on every host" in term.prompt()
    assert "2 hosts: 2 ok in " in term.line("Uname")
    term.send("!echo started; exec sleep 300\r")
    for _ in range(2):
        term.expect(r"node0[12]:\s+started")
    term.send("\x03")  # the first Ctrl-C goes to the remote commands as SIGINT
    out = term.prompt()
    assert "interrupt: sent SIGINT" in out and "node[01-02]: failed (killed by SIGINT)" in out, out
    assert term.exit() == 0


def test_bad_input_is_one_line_and_the_shell_goes_on(shell, tmp_path):
    broken = tmp_path / "broken.proto"
    broken.write_text('syntax = "proto3";\nservice Broken { rpc Go(Nope) returns (Nope); }\n')
    term = shell("node01", "--agent", "sysinfo")
    for line, message in [
        ("Unmae", "did you mean 'Uname'?"),
        ("Sleep seconds=[1,", "unclosed '['"),
        ("Sleep seconds=abc", "field 'seconds' expects double, got str 'abc'"),
        ("use nosuchhost", "no host or group named 'nosuchhost'"),
        (f"load {broken}", "broken.proto"),
        ("set forks 0", "set forks: must be at least 1"),
    ]:
        out = term.line(line)
        errors = [text for text in out.splitlines() if text.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], out
    out = term.line("Fail message=boom")  # a failed call is a row, not an error
    assert re.search(r"^node01\s+failed\s+UNKNOWN: RuntimeError: boom", out, re.M)
    assert "node01 (1 of 1 hosts)" in term.line("hosts")
    assert term.exit() == 0


def test_gathered_and_json_output_help_streaming_and_py(shell):
    term = shell("node01:node02", "--agent", "sysinfo")
    assert "output gathered" in term.line("=")
    out = term.line("Sleep seconds=0.01")
    assert re.search(r"^node\[01-02\] \(2\)\s+ok\s+comment='slept 0.01 s'", out, re.M), out
    out = term.line("!uname -s")
    assert "node[01-02] (2)\n" in out and "\nLinux\n" in out and "node01: Linux" not in out
    term.line("set output json")
    out = term.line("Uname")
    assert '"nodename": "node02"' in out and '"status": "ok"' in out
    term.line("set output table")
    out = term.line("help Sleep")
    assert "SysinfoAgent.Sleep(SleepArgs) -> Response" in out and "seconds (double): How long to sleep" in out
    out = term.line("Count n=2 size=1")
    lines = sorted(line.split()[0:2] for line in out.splitlines() if re.match(r"node0\d:", line))
    assert lines == [["node01:", "index=0"], ["node01:", "index=1"], ["node02:", "index=0"], ["node02:", "index=1"]]
    term.send("py\r")
    term.expect(">>> ")
    term.send("print(sorted(fleet.hosts), last.method, sysinfo.Uname()['node01'].nodename)\r")
    term.expect(r"\['node01', 'node02'\] Count node01")
    # Ctrl-D at the console's prompt, as a user presses it (one typed ahead, while the line still runs, is lost
    # when the console puts the terminal in raw mode again): back to the shell, agents still there.
    term.expect(">>> ")
    term.send("\x04")
    term.prompt()
    assert "2 hosts: 2 ok in " in term.line("Uname")
    assert term.exit() == 0


def test_a_host_that_fails_to_start_stays_listed_and_retry_tries_it_again(shell):
    term = shell("-H", "node01,nosuch.invalid", "--connect-timeout", "2", "--agent", "sysinfo", inventory=False)
    assert re.search(r"sysinfo: nosuch\.invalid unreachable: tcp: ", term.text())
    out = term.line("Uname")
    assert re.search(r"^node01\s+ok\s", out, re.M)
    assert re.search(r"^nosuch\.invalid\s+unreachable\s+tcp: ", out, re.M)
    assert re.search(r"sysinfo\s+SysinfoAgent\s+node01\s+nosuch\.invalid", term.line("agents"))
    out = term.line("retry")
    assert re.search(r"sysinfo: nosuch\.invalid unreachable: tcp: ", out) and "node01" not in out
    assert term.exit() == 0


def test_load_again_extends_an_agent_and_retry_starts_it_where_it_failed(shell, fresh_testbed):
    bed = fresh_testbed(2)
    bed.kill_sshd("node02")
    term = shell("--connect-timeout", "2", bed=bed)
    term.line("use node01")
    assert "sysinfo: ready on node01 (1)" in term.line("load sysinfo")
    term.line("use all")
    out = term.line("load sysinfo")  # again: on the selected hosts it does not run on yet
    assert re.search(r"sysinfo: node02 unreachable: tcp: ", out) and "node01" not in out, out
    out = term.line("Uname")
    assert re.search(r"^node01\s+ok\s", out, re.M) and re.search(r"^node02\s+unreachable\s+tcp: ", out, re.M)
    bed.start_sshd("node02")
    assert "sysinfo: ready on node02 (1)" in term.line("retry")
    out = term.line("Uname")
    assert re.search(r"^node01\s+ok\s.*nodename=node01", out, re.M)
    assert re.search(r"^node02\s+ok\s.*nodename=node02", out, re.M), out
    assert "error: sysinfo is loaded on every selected host already" in term.line("load sysinfo")
    assert "nothing to retry" in term.line("retry")
    assert term.exit() == 0


def test_a_script_on_stdin_runs_line_by_line(testbed):
    script = "load sysinfo\nuse node02\n!hostname\nbogus\nFail message=x\nexit\n"
    argv = [SSHFLEET, "shell", "-i", str(testbed.inventory), "-F", str(testbed.ssh_config), "node01:node02"]
    proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sysinfo: ready on node[01-02] (2)" in out
    assert re.search(r"^node02:\s+node02$", out, re.M) and "node01: node01" not in out
    assert "error: unknown command or method 'bogus'" in out
    assert re.search(r"^node02\s+failed\s+UNKNOWN: RuntimeError: x", out, re.M)  # calls follow the selection
    assert not re.search(r"^node01\s+failed", out, re.M)
