"""``sshfleet run`` against real sshd: argv kept whole, no hang without stdin, --stdin, exit statuses with a
failing command and a cut link, --gather, --json, --outdir, -t on a real pseudo-terminal, Ctrl-C.

In-process through ``main([...])`` with capsys where that is enough; as a subprocess where a real stdin,
terminal or signal is the point. The leftover hook checks that every host ends clean.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from sshfleet._cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main
from sshfleet._cli.run import EXIT_INTERRUPTED

SSHFLEET = str(Path(sys.executable).with_name("sshfleet"))
DEADLINE = 60  # seconds any subprocess may take before the test fails instead of hanging


def bed_args(bed, *extra: str) -> list[str]:
    return ["-i", str(bed.inventory), "-F", str(bed.ssh_config), *extra]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["run", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def names(bed) -> list[str]:
    return [h.name for h in bed.hosts]


def spawn(argv: list[str], **kwargs) -> subprocess.Popen[bytes]:
    return subprocess.Popen([SSHFLEET, "run", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def read_until(fd: int, pattern: bytes, deadline: float = DEADLINE) -> bytes:
    """Read ``fd`` until ``pattern`` (a regex) matches what was read; fails instead of hanging."""
    data = b""
    end = time.monotonic() + deadline
    while not re.search(pattern, data):
        remaining = end - time.monotonic()
        assert remaining > 0, f"never saw {pattern!r}; got {data!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                chunk = b""
            assert chunk, f"EOF before {pattern!r}; got {data!r}"
            data += chunk
    return data


# --- arguments and stdin --------------------------------------------------------------------------------


def test_arguments_with_spaces_and_quotes_arrive_whole(testbed, capsys):
    code, out, err = run(capsys, *bed_args(testbed), "--", "printf", "%s\n", "a b", "c'd")
    assert code == EXIT_OK, err
    expected = sorted(line for h in names(testbed) for line in (f"{h}: a b", f"{h}: c'd"))
    assert sorted(out.splitlines()) == expected
    for host in names(testbed):  # each host's lines keep their order
        mine = [line for line in out.splitlines() if line.startswith(f"{host}: ")]
        assert mine == [f"{host}: a b", f"{host}: c'd"]
    assert err.splitlines()[-1].startswith("sshfleet: 8 hosts: 8 ok in ")
    assert "sshfleet: node[01-08]: ok" in err


def test_a_command_waiting_for_stdin_ends_at_once(testbed, capsys):
    code, out, _ = run(capsys, *bed_args(testbed), "--", "cat")
    assert (code, out) == (EXIT_OK, "")


def test_shell_line_with_dash_c(testbed, capsys):
    code, out, _ = run(capsys, *bed_args(testbed, "node01:node02"), "-c", "echo $(hostname) | tr a-z A-Z")
    assert code == EXIT_OK
    assert sorted(out.splitlines()) == ["node01: NODE01", "node02: NODE02"]


def test_hosts_without_inventory(testbed, capsys):
    args = ["-H", "node[01-02],node05", "-F", str(testbed.ssh_config), "--", "hostname"]
    code, out, _ = run(capsys, *args)
    assert code == EXIT_OK
    assert sorted(out.splitlines()) == ["node01: node01", "node02: node02", "node05: node05"]


def test_stdin_is_broadcast_with_dash_dash_stdin(testbed):
    proc = subprocess.run(
        [SSHFLEET, "run", *bed_args(testbed), "--stdin", "--", "cat"],
        input=b"hi\n",
        capture_output=True,
        timeout=DEADLINE,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    assert sorted(proc.stdout.decode().splitlines()) == [f"{h}: hi" for h in names(testbed)]
    assert b"\x1b[" not in proc.stdout + proc.stderr  # no colours when not on a terminal


def test_stdout_and_stderr_lines_go_to_our_stdout_and_stderr(testbed, capsys):
    code, out, err = run(capsys, *bed_args(testbed, "node01"), "-c", "echo out; echo err >&2; printf partial")
    assert code == EXIT_OK
    assert out.splitlines() == ["node01: out", "node01: partial"]
    assert err.splitlines()[0] == "node01: err"


def test_usage_errors(testbed, capsys):
    code, _, err = run(capsys, *bed_args(testbed), "uptime")
    assert code == EXIT_USAGE and "put it after --" in err
    code, _, err = run(capsys, "--", "uptime")
    assert code == EXIT_USAGE and "which hosts?" in err
    code, _, err = run(capsys, *bed_args(testbed, "nothing*"), "--", "true")
    assert code == EXIT_USAGE and "no hosts matching 'nothing*'" in err


# --- exit statuses --------------------------------------------------------------------------------------


def test_failed_command_and_cut_link_give_exit_3_with_reasons(fresh_testbed, capsys):
    bed = fresh_testbed(3)
    bed.link_down("node03")
    command = ["--", "sh", "-c", "test $(hostname) != node02"]
    argv = [*bed_args(bed), "--connect-timeout", "1"]
    code, out, err = run(capsys, *argv, *command)
    assert code == EXIT_UNREACHABLE, err
    assert out == ""
    summary = [line for line in err.splitlines() if line.startswith("sshfleet: ")]
    assert summary[0] == "sshfleet: node01: ok"
    assert summary[1] == "sshfleet: node02: failed (exit 1)"
    assert summary[2].startswith("sshfleet: node03: unreachable (tcp: ")
    assert summary[3].startswith("sshfleet: 3 hosts: 1 ok, 1 failed, 1 unreachable in ")

    code, out, _ = run(capsys, *argv, "--json", *command)
    assert code == EXIT_UNREACHABLE
    results = json.loads(out)
    assert [results[h]["status"] for h in ("node01", "node02", "node03")] == ["ok", "failed", "unreachable"]
    assert results["node02"]["exit_code"] == 1 and results["node03"]["exit_code"] is None
    assert results["node03"]["error"]["kind"] == "unreachable" and results["node03"]["error"]["phase"] == "tcp"


def test_failure_alone_is_exit_1_and_not_found_is_exit_3(testbed, capsys):
    code, _, err = run(capsys, *bed_args(testbed), "--", "sh", "-c", "test $(hostname) != node02")
    assert code == EXIT_FAILED
    assert "sshfleet: node02: failed (exit 1)" in err and "sshfleet: node[01,03-08]: ok" in err
    code, _, err = run(capsys, *bed_args(testbed, "node01"), "--", "no-such-command")
    assert code == EXIT_UNREACHABLE
    assert "sshfleet: node01: could not start (no-such-command: command not found)" in err


def test_timeout_counts_as_failed(testbed, capsys):
    code, _, err = run(capsys, *bed_args(testbed, "node01"), "--timeout", "0.5", "--", "sleep", "300")
    assert code == EXIT_FAILED
    assert "sshfleet: node01: failed (timed out after 0.5s)" in err


# --- output modes ---------------------------------------------------------------------------------------


def test_gather_groups_identical_results(testbed, capsys):
    script = "test $(hostname) = node02 && echo two || echo other; hostname | grep -q 5 && exit 3; true"
    code, out, err = run(capsys, *bed_args(testbed), "-b", "-c", script)
    assert code == EXIT_FAILED
    rule = "-" * len("node[01,03-04,06-08] (6)")
    assert f"{rule}\nnode[01,03-04,06-08] (6)\n{rule}\nother\n" in out
    assert "\nnode02\n---------------\ntwo\n" in out
    assert "\nnode05 failed (exit 3)\n----------------------\nother\n" in out
    assert "sshfleet: node05: failed (exit 3)" in err


def test_json_parses_with_every_host(testbed, capsys):
    code, out, _ = run(capsys, *bed_args(testbed), "--json", "-c", "echo out; echo err >&2; exit 3")
    assert code == EXIT_FAILED
    results = json.loads(out)
    assert list(results) == names(testbed)
    for result in results.values():
        assert result == {
            "status": "failed",
            "exit_code": 3,
            "signal": 0,
            "timed_out": False,
            "stdout": "out\n",
            "stderr": "err\n",
            "error": None,
        }


def test_outdir_writes_one_file_per_host_and_stream(testbed, capsys, tmp_path):
    outdir = tmp_path / "out"
    script = "echo out-$(hostname); echo err >&2; test $(hostname) != node03"
    code, out, _ = run(capsys, *bed_args(testbed), "--outdir", str(outdir), "-c", script)
    assert code == EXIT_FAILED and out == ""
    for host in names(testbed):
        assert (outdir / f"{host}.out").read_text() == f"out-{host}\n"
        assert (outdir / f"{host}.err").read_text() == "err\n"
        assert (outdir / f"{host}.rc").read_text() == ("1\n" if host == "node03" else "0\n")


# --- terminals ------------------------------------------------------------------------------------------


def test_tty_option_gives_each_host_a_pty(testbed, capsys):
    code, out, _ = run(capsys, *bed_args(testbed, "node01:node02:node03"), "-t", "--", "tty")
    assert code == EXIT_OK
    lines = sorted(out.splitlines())
    assert len(lines) == 3 and all(re.fullmatch(r"node0[1-3]: /dev/pts/\d+", line) for line in lines), lines
    code, out, _ = run(capsys, *bed_args(testbed, "node01"), "-t", "--", "top", "-b", "-n1")
    assert code == EXIT_OK
    assert out.splitlines()[0].startswith("node01: top - ")


INITIAL_MODES: dict[int, list] = {}  # terminal modes of each test terminal before sshfleet ran on it


def _interactive(bed, *command: str, rows: int = 30, cols: int = 90) -> tuple[subprocess.Popen[bytes], int, int]:
    """``sshfleet run -t`` on node01 with a pseudo-terminal of ours as its stdin, stdout and stderr."""
    master, slave = os.openpty()
    _set_size(master, rows, cols)
    INITIAL_MODES[slave] = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [SSHFLEET, "run", *bed_args(bed, "node01"), "-t", "--", *command],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    return proc, master, slave


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_interactive_session_types_into_the_remote_terminal(testbed):
    proc, master, slave = _interactive(testbed, "sh", "-c", "stty size; read x; echo got:$x", rows=33, cols=77)
    before = INITIAL_MODES[slave]
    try:
        read_until(master, rb"33 77\r\n")  # the remote terminal is up, with our window size
        raw = termios.tcgetattr(slave)[3]
        assert not raw & termios.ICANON and not raw & termios.ISIG and not raw & termios.ECHO
        os.write(master, b"hello\r")
        data = read_until(master, rb"got:hello\r\n")
        assert b"hello\r\n" in data
        assert proc.wait(timeout=DEADLINE) == EXIT_OK
        assert termios.tcgetattr(slave) == before  # our terminal is back out of raw mode
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)


def test_interactive_ctrl_c_is_a_byte_for_the_remote_terminal(testbed):
    script = 'trap "echo trapped; exit 7" INT; echo ready; while :; do sleep 0.1; done'
    proc, master, slave = _interactive(testbed, "sh", "-c", script)
    try:
        read_until(master, rb"ready\r\n")
        os.write(master, b"\x03")  # raw mode here: the remote pty turns it into SIGINT
        data = read_until(master, rb"node01: failed \(exit 7\)")
        assert b"trapped" in data
        assert proc.wait(timeout=DEADLINE) == EXIT_FAILED
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)


def test_interactive_window_size_follows_sigwinch(testbed):
    script = "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done"
    proc, master, slave = _interactive(testbed, "sh", "-c", script)
    try:
        read_until(master, rb"ready\r\n")
        _set_size(master, 41, 123)
        proc.send_signal(signal.SIGWINCH)  # what the kernel sends when our terminal is resized
        read_until(master, rb"41 123\r\n")
        assert proc.wait(timeout=DEADLINE) == EXIT_OK
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)


# --- Ctrl-C ---------------------------------------------------------------------------------------------


def _wait_started(proc: subprocess.Popen[bytes], hosts: int) -> None:
    assert proc.stdout is not None
    data = b""
    while data.count(b": started\n") < hosts:
        data += read_until(proc.stdout.fileno(), rb".")


def test_ctrl_c_interrupts_the_remote_commands(testbed):
    proc = spawn(bed_args(testbed, "--", "sh", "-c", "echo started; exec sleep 300"))
    try:
        _wait_started(proc, 8)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, err
    text = err.decode()
    assert "sshfleet: interrupt: sent SIGINT to the command on " in text
    assert "sshfleet: node[01-08]: failed (killed by SIGINT)" in text
    assert "sshfleet: 8 hosts: 8 failed in " in text


def test_second_ctrl_c_aborts_when_the_commands_ignore_the_first(testbed):
    script = "trap '' INT; echo started; sleep 300"
    proc = spawn(bed_args(testbed, "node01:node02", "-c", script))
    try:
        _wait_started(proc, 2)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        read_until(proc.stderr.fileno(), rb"Ctrl-C again to abort")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert b"sshfleet: aborted" in err and b"node[01-02]: interrupted (no exit status)" in err


def test_openssh_transport(testbed, capsys):
    """--transport openssh: the same run over the ssh binary (ControlMaster per host)."""
    code, out, err = run(capsys, *bed_args(testbed, "--transport", "openssh"), "--", "printf", "%s\n", "a b")
    assert code == EXIT_OK, err
    assert sorted(out.splitlines()) == sorted(f"{h}: a b" for h in names(testbed))


# --- --detach -------------------------------------------------------------------------------------------


def test_detach_leaves_the_command_running_after_the_run(testbed, capsys, openssh):
    line = f"sleep 300; : detach-{os.getpid()}"
    code, out, err = run(capsys, *bed_args(testbed, "node01:node02"), "--detach", "-c", line)
    assert code == EXIT_OK, err
    pids = {}
    for text in out.splitlines():
        host, _, rest = text.partition(":")
        pids[host] = int(rest.strip().removeprefix("detached, pid "))
    assert list(pids) == ["node01", "node02"]
    assert err.splitlines()[-1].startswith("sshfleet: 2 hosts: 2 ok in ")
    try:
        for host, pid in pids.items():  # the run has ended and its agent closed: the command still runs
            alive = openssh(testbed, host, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
            assert alive.returncode == 0 and line in alive.stdout, alive.stderr
    finally:
        for host, pid in pids.items():
            openssh(testbed, host, f"kill -TERM -{pid} 2>/dev/null; kill -TERM {pid} 2>/dev/null; true")


def test_detach_refuses_what_needs_the_run_to_stay(testbed, capsys):
    code, out, err = run(capsys, "-H", "node01", "--detach", "--timeout", "5", "--stdin", "--", "sleep", "1")
    assert code == EXIT_USAGE and not out
    assert err == (
        "sshfleet run: --detach leaves the command running with no input or output here: drop --stdin and "
        "--timeout (redirect its output on the host with -c 'CMD > FILE 2>&1')\n"
    )


def test_detach_json_has_each_pid_and_a_missing_command_is_not_started(testbed, capsys, openssh):
    code, out, err = run(capsys, *bed_args(testbed, "node03"), "--detach", "--json", "--", "sleep", "299")
    assert code == EXIT_OK, err
    entry = json.loads(out)["node03"]
    try:
        assert entry["status"] == "ok" and entry["exit_code"] == 0 and entry["pid"] > 1
        assert openssh(testbed, "node03", f"tr '\\0' ' ' < /proc/{entry['pid']}/cmdline").stdout == "sleep 299 "
    finally:
        openssh(testbed, "node03", f"kill {entry['pid']} 2>/dev/null; true")
    code, out, err = run(capsys, *bed_args(testbed, "node04"), "--detach", "--", "no-such-command-here")
    assert code == EXIT_UNREACHABLE and not out
    assert "sshfleet: node04: could not start (no-such-command-here: command not found)" in err
