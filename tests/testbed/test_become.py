"""``become``: servicers started through sudo as another user, logged in as the non-root ``fleet``.

Each test installs its own sudoers rule (and, for the password tests, a login password for ``fleet``) through
``Testbed.sudo_rule``, which removes both afterwards. The leftover hook (tests/conftest.py) then proves that no
process and no session directory is left on the hosts, root's ``~/.cache/sshfleet/sessions`` included.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import secrets
import select
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from agents.exec_agent import ExecAgent
from agents.sysinfo import SysinfoAgent
from agents.tcpdump_agent import TcpDumpAgent
from sshfleet._bootstrap import BecomeError
from sshfleet._cli import EXIT_OK, EXIT_UNREACHABLE, main
from sshfleet.errors import RemotePythonError
from sshfleet.inventory import Inventory
from tests.testbed.test_seed_agents import reader

NO_HANG = 30.0
NOPASSWD = "ALL=(ALL) NOPASSWD: ALL"
WITH_PASSWORD = "ALL=(ALL) ALL"
SSHFLEET = str(Path(sys.executable).with_name("sshfleet"))


def names(bed, n):
    return [h.name for h in bed.hosts][:n]


def whoami(agent) -> dict[str, str]:
    replies = agent.Run(["sh", "-c", 'echo "$(id -un) $HOME"'], rpc_timeout=NO_HANG)
    assert replies.success(), replies.status()
    return {host: reply.stdout.decode().strip() for host, reply in replies.items()}


def test_become_runs_the_servicer_as_root_next_to_one_as_the_login_user(testbed):
    hosts = names(testbed, 2)
    opts = testbed.ssh_options(user="fleet")
    sudoer = testbed.sudo_rule(NOPASSWD)
    with sudoer, ExecAgent(hosts, ssh_options=opts, become=True) as root, ExecAgent(hosts, ssh_options=opts) as plain:
        assert root.started.success(), root.started.status()
        assert plain.started.success(), plain.started.status()
        assert whoami(root) == {h: "root /root" for h in hosts}
        assert whoami(plain) == {h: "fleet /home/fleet" for h in hosts}
        # Root's servicer keeps its session under root's own cache, 0700 and root's, as a login user's.
        sessions = testbed.session_dirs(hosts[0])["root"]
        (session,) = sessions.iterdir()
        assert (session.stat().st_uid, session.stat().st_mode & 0o777) == (0, 0o700)
        assert (sessions.parent.stat().st_uid, sessions.parent.stat().st_mode & 0o777) == (0, 0o700)
    # close() waited for each supervisor, which removes its session directory before it exits (and sudo with it).
    assert not list(sessions.iterdir())
    assert testbed.wait_clean(10) == {}


def test_tcpdump_captures_as_root_when_logged_in_as_a_sudoer(testbed):
    host = testbed.hosts[4]
    opts = testbed.ssh_options(user="fleet")
    dump = host.tmp_dir / "become.cap"
    with testbed.sudo_rule(NOPASSWD), TcpDumpAgent([host.name], ssh_options=opts, become=True) as tcpdump:
        assert tcpdump.started.success(), tcpdump.started.status()
        assert tcpdump.Configure(dumpfile="/tmp/become.cap").success()
        started = tcpdump.StartCollection(destination=testbed.controller_address)
        assert started.success(), started.status()
        # The calls themselves travel to the controller over SSH: the capture sees them.
        deadline = time.monotonic() + NO_HANG
        while len(_packets(dump, testbed.controller_address)) < 5:
            assert time.monotonic() < deadline, "no packets captured"
            tcpdump.Configure(dumpfile="/tmp/become.cap")  # traffic; refused while running, which is fine
            time.sleep(0.1)
        stopped = tcpdump.StopCollection()
        assert stopped.success(), stopped.status()
    assert len(_packets(dump, testbed.controller_address)) >= 5


def test_tcpdump_without_become_cannot_capture_as_the_login_user(testbed):
    """What the test above needs become for: the same capture as ``fleet`` is refused by the kernel."""
    host = testbed.hosts[4]
    with TcpDumpAgent([host.name], ssh_options=testbed.ssh_options(user="fleet")) as tcpdump:
        assert tcpdump.Configure(dumpfile="/tmp/plain.cap").success()
        started = tcpdump.StartCollection(destination=testbed.controller_address)
        assert not started.success()
        assert "tcpdump exited" in started[host.name].comment, started.status()


def _packets(path: Path, address: str) -> list[object]:
    try:
        return [p for p in reader.read_pcap(path) if address in (p.src, p.dst)]
    except (OSError, reader.PcapError):
        return []


def test_password_goes_on_stdin_never_in_argv_or_environment(testbed):
    hosts = names(testbed, 2)
    password = "pw-" + secrets.token_hex(12)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # every process on the machine (the hosts share its pid namespace), all along
        needle = password.encode()
        while not stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                for part in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{entry}/{part}", "rb") as f:
                            if needle in f.read():
                                seen.append(f"{entry}/{part}")
                    except OSError:
                        pass
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    with testbed.sudo_rule(WITH_PASSWORD, password=password):
        watcher.start()
        try:
            opts = testbed.ssh_options(user="fleet")
            with ExecAgent(hosts, ssh_options=opts, become=True, become_password=password) as agent:
                assert agent.started.success(), agent.started.status()
                assert whoami(agent) == {h: "root /root" for h in hosts}
        finally:
            stop.set()
            watcher.join(timeout=10)
    assert not seen, f"the password was seen in {seen}"


def test_a_password_is_not_sent_when_sudo_does_not_ask_for_it(testbed):
    """NOPASSWD with a password given: the password must not reach the bootstrap's stdin (its loader would read
    it as the length of the code and fail), so the start succeeding is the proof."""
    host = testbed.hosts[5].name
    opts = testbed.ssh_options(user="fleet")
    with testbed.sudo_rule(NOPASSWD), ExecAgent([host], ssh_options=opts, become=True, become_password="x") as agent:
        assert agent.started.success(), agent.started.status()
        assert whoami(agent) == {host: "root /root"}


def test_sudo_wanting_a_password_that_was_not_given_is_a_clear_error(testbed):
    host = testbed.hosts[5].name
    with testbed.sudo_rule(WITH_PASSWORD, password=secrets.token_hex(8)):
        began = time.monotonic()
        with SysinfoAgent([host], ssh_options=testbed.ssh_options(user="fleet"), become=True) as agent:
            error = agent.started[host]
    assert time.monotonic() - began < 15
    assert isinstance(error, BecomeError) and error.kind == "become_failed"
    assert "sudo wants a password to run commands as 'root'" in error.message
    assert "become_password=" in error.message and "a password is required" in error.message


def test_a_wrong_become_password_is_a_clear_error_not_a_hang(testbed):
    host = testbed.hosts[5].name
    with testbed.sudo_rule(WITH_PASSWORD, password=secrets.token_hex(8)):
        began = time.monotonic()
        opts = testbed.ssh_options(user="fleet")
        with SysinfoAgent([host], ssh_options=opts, become=True, become_password="not-it") as agent:
            error = agent.started[host]
    assert time.monotonic() - began < 15
    assert isinstance(error, BecomeError) and error.to_dict()["kind"] == "become_failed"
    assert "wrong password" in error.message and "not-it" not in error.message


def test_password_over_the_openssh_transport(testbed):
    """The same stdin handshake through the ssh binary's pipes instead of paramiko's channel."""
    host = testbed.hosts[6].name
    password = "pw-" + secrets.token_hex(12)
    opts = testbed.ssh_options(user="fleet").replace(transport="openssh")
    with testbed.sudo_rule(WITH_PASSWORD, password=password):
        with ExecAgent([host], ssh_options=opts, become=True, become_password=password) as agent:
            assert agent.started.success(), agent.started.status()
            assert whoami(agent) == {host: "root /root"}
        with SysinfoAgent([host], ssh_options=opts, become=True, become_password="wrong") as agent:
            assert isinstance(agent.started[host], BecomeError), agent.started.status()


def test_a_missing_interpreter_under_sudo_is_a_python_error_not_a_become_error(testbed):
    host = testbed.hosts[6].name
    opts = testbed.ssh_options(user="fleet")
    with testbed.sudo_rule(NOPASSWD), SysinfoAgent([host], ssh_options=opts, become=True, python="/no/python3") as a:
        error = a.started[host]
    assert isinstance(error, RemotePythonError) and "'/no/python3' was not found" in error.message, error


def test_no_sudo_rule_at_all_is_a_clear_error(testbed):
    host = testbed.hosts[5].name
    with SysinfoAgent([host], ssh_options=testbed.ssh_options(user="fleet"), become=True) as agent:
        error = agent.started[host]
    assert isinstance(error, BecomeError), error
    assert "sudo" in error.message


def test_inventory_ansible_become_per_host(testbed, tmp_path):
    first, second = names(testbed, 2)
    inventory = tmp_path / "become.ini"
    inventory.write_text(
        f"[lab]\n{first} ansible_become=yes ansible_become_method=sudo\n{second}\n[lab:vars]\nansible_user=fleet\n"
    )
    specs = Inventory.load(str(inventory)).select("lab")
    assert [(s.become, s.become_user) for s in specs] == [(True, None), (None, None)]
    sudoer = testbed.sudo_rule(NOPASSWD)
    with sudoer, ExecAgent.from_inventory(str(inventory), "lab", ssh_config=str(testbed.ssh_config)) as agent:
        assert agent.started.success(), agent.started.status()
        assert whoami(agent) == {first: "root /root", second: "fleet /home/fleet"}


def _stdout(entry: dict) -> str:
    return base64.b64decode(entry["reply"]["stdout"]).decode()  # bytes fields are base64 in --json


def _cli(testbed, *extra: str) -> list[str]:
    return [SSHFLEET, "call", "-i", str(testbed.inventory), "-F", str(testbed.ssh_config), "-l", "fleet", *extra]


def test_cli_call_become(testbed):
    argv = _cli(testbed, "node01:node02", "exec", "Run", "argv=['id', '-un']", "--become", "--json")
    with testbed.sudo_rule(NOPASSWD):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == EXIT_OK, proc.stderr
    replies = json.loads(proc.stdout)
    assert {host: _stdout(entry) for host, entry in replies.items()} == {"node01": "root\n", "node02": "root\n"}


def test_cli_without_a_password_says_to_use_dash_k(testbed, capsys):
    argv = _cli(testbed, "node03", "exec", "Run", "argv=['id', '-un']", "--become")[1:]
    with testbed.sudo_rule(WITH_PASSWORD, password=secrets.token_hex(8)):
        code = main(argv)
    out = capsys.readouterr().out
    assert code == EXIT_UNREACHABLE, out
    assert "sudo wants a password" in out and "give it with -K" in out, out


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_cli_ask_become_pass_prompts_once_on_the_terminal(testbed):
    password = "pw-" + secrets.token_hex(12)
    argv = _cli(testbed, "node03:node04", "exec", "Run", "argv=['id', '-un']", "--become", "-K", "--json")
    with testbed.sudo_rule(WITH_PASSWORD, password=password):
        master, slave = os.openpty()
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_controlling_terminal)
        os.close(slave)
        out = b""
        try:
            out = _read_until(master, out, b"BECOME password: ")
            os.write(master, password.encode() + b"\r")
            out = _read_until(master, out, None)
            assert proc.wait(timeout=NO_HANG) == EXIT_OK, out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
    text = out.decode("utf-8", "replace")
    assert text.count("BECOME password:") == 1 and password not in text
    body = text[text.index("{") :]
    replies = json.loads(re.sub(r"\r", "", body))
    assert {h: _stdout(e) for h, e in replies.items()} == {"node03": "root\n", "node04": "root\n"}


def _read_until(fd: int, got: bytes, needle: bytes | None) -> bytes:
    """Read the pty until ``needle`` shows (or, with None, until the program closes it)."""
    deadline = time.monotonic() + NO_HANG
    while needle is None or needle not in got:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"never saw {needle!r}; got {got!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the program closed the terminal
                chunk = b""
            if not chunk:
                assert needle is None, f"ended before {needle!r}; got {got!r}"
                return got
            got += chunk
    return got


def test_shell_become_runs_bang_commands_as_root(testbed, tmp_path):
    from tests.testbed.test_shell import Terminal

    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "NO_COLOR": "1"}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    argv = ["-H", "node07", "-F", str(testbed.ssh_config), "-l", "fleet", "--become"]
    with testbed.sudo_rule(NOPASSWD):
        terminal = Terminal(argv, env)
        try:
            terminal.prompt()
            assert "node07: root\n" in terminal.line("!id -un")
            assert terminal.exit() == EXIT_OK
        finally:
            if terminal.master >= 0:  # failed before its exit: do not leave the shell running
                terminal.proc.kill()
                terminal.close()
