"""The OpenSSH (ControlMaster) transport against real sshd: exec, stdin, pty, Unix-socket forwards, errors,
ProxyJump, teardown. Every test also proves, through the suite's leftover check, that the hosts end up clean.

Timing assertions only check that a bounded wait ends (bound + a generous margin), never how fast it is.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sshfleet._options import HostSpec, Timeouts
from sshfleet._ssh import OpenSshConnection, PipeChannel, connect_openssh
from sshfleet._ssh._openssh import sweep_stale
from sshfleet.errors import ChannelError, ConnectTimeout
from tests.testbed.helpers import jump_config

MARGIN = 15.0

# Echoes every connection on an ephemeral 127.0.0.1 port (printed first) until its stdin ends.
ECHO_SERVER = r"""
import socket, sys, threading
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
print(server.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
def accept():
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
sys.stdin.read()
"""


def ssh_pids(marker: str) -> list[int]:
    """Controller processes named ssh whose argv mentions ``marker`` (a control directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"ssh" and any(marker.encode() in a for a in argv):
            found.append(int(entry))
    return found


def wait_no_ssh(marker: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := ssh_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def read_to_eof(channel: PipeChannel, timeout: float = 30.0) -> bytes:
    channel.settimeout(timeout)
    chunks = []
    while data := channel.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def readline(channel: PipeChannel, timeout: float = 30.0) -> bytes:
    channel.settimeout(timeout)
    line = b""
    while not line.endswith(b"\n"):
        data = channel.recv(1)
        assert data, "channel closed before a full line"
        line += data
    return line


def run(conn: OpenSshConnection, command: str) -> tuple[int, str, str]:
    channel = conn.exec(command, timeout=30)
    try:
        out = read_to_eof(channel).decode()
        status = channel.recv_exit_status()
        channel.settimeout(30)
        err = b""
        while data := channel.recv_stderr(65536):
            err += data
        return status, out, err.decode()
    finally:
        channel.close()


# --- connect, exec, close --------------------------------------------------------------------------------


def test_connect_exec_close(testbed):
    node = testbed.host("node01")
    conn = connect_openssh(HostSpec("node01"), testbed.ssh_options())
    workdir = conn.workdir
    with conn:
        assert (conn.host, conn.address, conn.port, conn.user) == ("node01", node.address, 22, "root")
        assert conn.is_active() and conn.is_active(check=True)
        assert stat.S_IMODE(os.stat(workdir).st_mode) == 0o700
        assert ssh_pids(workdir) == [conn.master_pid]
        assert run(conn, "hostname; echo err >&2; exit 3") == (3, "node01\n", "err\n")
        assert run(conn, "id -un") == (0, "root\n", "")
    assert not conn.is_active()
    assert not os.path.exists(workdir)
    assert wait_no_ssh(workdir) == []
    conn.close()  # idempotent
    with pytest.raises(ChannelError, match="closed"):
        conn.exec("true", timeout=5)
    with pytest.raises(ChannelError):
        conn.forward_unix("127.0.0.1", 22)


def test_stdin_round_trip_through_cat(testbed):
    payload = os.urandom(3 * 1024 * 1024)
    with connect_openssh(HostSpec("node02"), testbed.ssh_options("fleet")) as conn:
        channel = conn.exec("cat", timeout=30)
        channel.settimeout(30)

        def write() -> None:
            channel.sendall(payload)
            channel.shutdown_write()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            echoed = read_to_eof(channel)
        finally:
            writer.join(30)
        assert echoed == payload
        assert channel.recv_exit_status() == 0
        channel.close()


def test_pty_gets_size_and_term(testbed):
    with connect_openssh(HostSpec("node03"), testbed.ssh_options("fleet")) as conn:
        channel = conn.exec("tty; echo $TERM; stty size", timeout=30, pty=True, term="vt100", width=100, height=30)
        lines = read_to_eof(channel).decode().split()
        assert lines[0].startswith("/dev/pts/") and lines[1:] == ["vt100", "30", "100"]
        assert channel.recv_exit_status() == 0
        channel.close()


def test_parallel_execs_share_the_master(testbed):
    log = testbed.host("node04").log_file
    before = log.read_text().count("Accepted publickey")
    # as fleet: root's shell on these hosts may run a heavy ~/.bashrc, and 32 of them at once crawl
    with connect_openssh(HostSpec("node04"), testbed.ssh_options("fleet")) as conn:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: run(conn, f"echo {i}"), range(32)))
        assert results == [(0, f"{i}\n", "") for i in range(32)]
    assert log.read_text().count("Accepted publickey") - before == 1  # one login served every exec


def test_lost_master_is_noticed(testbed):
    conn = connect_openssh(HostSpec("node05"), testbed.ssh_options())
    try:
        os.kill(conn.master_pid, signal.SIGKILL)
        deadline = time.monotonic() + MARGIN
        while conn.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not conn.is_active()
        with pytest.raises(ChannelError, match="gone"):
            conn.exec("true", timeout=5)
    finally:
        conn.close()
    assert not os.path.exists(conn.workdir)


# --- forwards --------------------------------------------------------------------------------------------


def test_forward_unix_reaches_a_server_on_the_host(testbed):
    with connect_openssh(HostSpec("node01"), testbed.ssh_options("fleet")) as conn:
        server = conn.exec(f"exec python3 -c {shlex.quote(ECHO_SERVER)}", timeout=30)
        try:
            port = int(readline(server))
            path = conn.forward_unix("127.0.0.1", port)
            assert os.path.dirname(path) == conn.workdir
            assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
            clients = []
            for _ in range(3):  # every connection is its own channel; several at once
                client = socket.socket(socket.AF_UNIX)
                client.settimeout(30)
                client.connect(path)
                clients.append(client)
            for i, client in enumerate(clients):
                client.sendall(b"ping %d" % i)
            for i, client in enumerate(clients):
                assert client.recv(100) == b"ping %d" % i
                client.close()
            conn.cancel_forward(path)
            assert not os.path.exists(path)
        finally:
            server.close()
        assert server.exit_status_ready()


def test_forward_unix_to_a_closed_port_closes_the_client(testbed):
    with connect_openssh(HostSpec("node02"), testbed.ssh_options()) as conn:
        path = conn.forward_unix("127.0.0.1", 1)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(30)
            client.connect(path)
            assert client.recv(10) == b""
        assert conn.is_active()  # ExitOnForwardFailure concerns the listener, not one refused channel
        assert "open failed" in conn.master_log()


def test_open_forward_with_stdio_forwarding(testbed):
    node = testbed.host("node03")
    with connect_openssh(HostSpec("node03"), testbed.ssh_options()) as conn:
        channel = conn.open_forward(node.address, 22, timeout=30)
        channel.settimeout(30)
        assert channel.recv(4) == b"SSH-"
        channel.close()
        with pytest.raises(ChannelError, match="refused"):
            conn.open_forward("127.0.0.1", 1, timeout=30)


# --- errors ----------------------------------------------------------------------------------------------


def test_cut_link_bounds_connect_and_ends_the_master(fresh_testbed):
    bed = fresh_testbed(2)
    options = bed.ssh_options().replace(timeouts=Timeouts(connect=2, auth=2, close=2), keepalive=1.0)
    conn = connect_openssh(HostSpec("node02"), options)
    bed.link_down("node01")
    bed.link_down("node02")
    try:
        started = time.monotonic()
        with pytest.raises(ConnectTimeout) as info:
            connect_openssh(HostSpec("node01"), options)
        assert info.value.phase == "tcp"
        assert time.monotonic() - started < 4 + MARGIN
        # keepalive 1 s * ServerAliveCountMax 3: the master gives up on its own
        deadline = time.monotonic() + 3 + MARGIN
        while conn.is_active() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not conn.is_active()
        assert "Timeout" in conn.master_log()
        started = time.monotonic()
        conn.close()
        assert time.monotonic() - started < 2 + MARGIN
    finally:
        conn.close()
        bed.link_up("node01")
        bed.link_up("node02")
    assert wait_no_ssh(conn.workdir) == []


# --- ProxyJump -------------------------------------------------------------------------------------------


def test_proxy_jump_goes_through_the_jump_host(testbed, tmp_path):
    before = set(ssh_pids("sshfleet-ssh-"))
    node02 = testbed.host("node02")
    with connect_openssh(HostSpec("via-node01"), jump_config(testbed, tmp_path)) as conn:
        status, out, _ = run(conn, "hostname; echo $SSH_CONNECTION")
        assert status == 0
        name, connection = out.splitlines()
        assert name == "node02"
        assert connection.split()[0] == testbed.host("node01").address  # node02 was reached from node01
        path = conn.forward_unix(node02.address, 22)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(30)
            client.connect(path)
            assert client.recv(4) == b"SSH-"
        assert len(set(ssh_pids("sshfleet-ssh-")) - before) >= 2  # two masters (and the hop's -W client)
    deadline = time.monotonic() + 10
    while set(ssh_pids("sshfleet-ssh-")) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(ssh_pids("sshfleet-ssh-")) - before


# --- the controller dies ---------------------------------------------------------------------------------

CONTROLLER = """
import sys, threading, time
from sshfleet._options import HostSpec
from sshfleet._ssh import connect_openssh
from sshfleet.testbed import Testbed
bed = Testbed.load(sys.argv[1])
made = []
worker = threading.Thread(target=lambda: made.append(connect_openssh(HostSpec("node06"), bed.ssh_options())))
worker.start()
worker.join()  # the connecting thread is gone: the master must not depend on it
print(made[0].master_pid, made[0].workdir, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) for the parent-death signal")
def test_killed_controller_takes_its_master_along(testbed):
    proc = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, testbed.name], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        pid, workdir = proc.stdout.readline().split()
        assert ssh_pids(workdir) == [int(pid)]
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert wait_no_ssh(workdir, MARGIN) == []
    # Only the directory is left (nobody was there to remove it): the next controller sweeps it.
    assert os.listdir(workdir) == ["master.log"]
    assert sweep_stale(os.path.dirname(workdir)) == [workdir]


UNCLOSED = """
import sys
from sshfleet._options import HostSpec
from sshfleet._ssh import connect_openssh
from sshfleet.testbed import Testbed
conn = connect_openssh(HostSpec("node07"), Testbed.load(sys.argv[1]).ssh_options())
print(conn.master_pid, conn.workdir, flush=True)
sys.exit(0)  # without close(): the interpreter's exit must clean up
"""


def test_connection_never_closed_is_cleaned_at_exit(testbed):
    done = subprocess.run([sys.executable, "-c", UNCLOSED, testbed.name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    _pid, workdir = done.stdout.split()
    assert not os.path.exists(workdir)
    assert wait_no_ssh(workdir, MARGIN) == []
