"""The SSH seam's contract, held by both transports against real sshd: one test, parametrized by transport.

What only one transport has (paramiko's keepalive and key loading, the OpenSSH masters' processes and sockets) stays
in test_ssh.py and test_openssh_transport.py.
"""

from __future__ import annotations

import socket

import pytest

from sshfleet._options import HostSpec
from sshfleet._ssh import Connection, connect, connect_openssh
from sshfleet.errors import AuthenticationError, ChannelError, ConnectError, HostKeyError
from tests.testbed.helpers import direct, jump_config, new_key

pytestmark = pytest.mark.testbed
CONNECT = {"paramiko": connect, "openssh": connect_openssh}
TRANSPORTS = list(CONNECT)
# What each transport adds to a message: paramiko its own advice, OpenSSH ssh's own words.
SAYS = {
    "auth": {"paramiko": "keys tried: ", "openssh": "Permission denied (publickey)"},
    "unknown key": {"paramiko": "ssh-keyscan", "openssh": "Host key verification failed"},
    "changed key": {"paramiko": "ssh-keygen -R", "openssh": "REMOTE HOST IDENTIFICATION HAS CHANGED"},
}


# Echoes every connection on an ephemeral 127.0.0.1 port (printed first) until its stdin ends.
ECHO_SERVER = """
import socket, sys, threading
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
print(server.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
def accept():
    while True:
        threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
sys.stdin.read()
"""


def read_all(channel, timeout: float = 30.0) -> bytes:
    channel.settimeout(timeout)
    chunks = []
    while data := channel.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def run(conn: Connection, command: str) -> tuple[int, str]:
    channel = conn.exec(command, timeout=30)
    try:
        out = read_all(channel).decode()
        return channel.recv_exit_status(), out
    finally:
        channel.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_exec_forward_close(testbed, transport):
    host = testbed.host("node01")
    with CONNECT[transport](HostSpec("node01"), testbed.ssh_options()) as conn:
        assert (conn.host, conn.address, conn.port, conn.user) == ("node01", host.address, 22, "root")
        assert conn.is_active() and conn.describe().startswith(f"root@{host.address}:22 (")
        assert run(conn, "hostname; echo err >&2; exit 3") == (3, "node01\n")
        channel = conn.exec("tty", timeout=30, pty=True, width=100, height=30)
        assert read_all(channel).startswith(b"/dev/pts/")
        channel.close()
        forward = conn.open_forward(host.address, 22, timeout=30)
        forward.settimeout(30)
        assert forward.recv(4) == b"SSH-"
        forward.close()
        # forward_local: a local socket whose every connection reaches a port on the host's 127.0.0.1.
        server = conn.exec(f"python3 -c '{ECHO_SERVER}'", timeout=30)
        server.settimeout(30)
        port = b""
        while not port.endswith(b"\n"):
            port += server.recv(1)
        local = conn.forward_local(int(port), timeout=30)
        assert local.target.startswith("unix:")
        for word in (b"one", b"two"):
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(30)
                client.connect(local.target[len("unix:") :])
                client.sendall(word)
                assert client.recv(16) == word
        local.close()
        local.close()  # idempotent
        server.close()
    assert not conn.is_active()
    conn.close()  # idempotent
    with pytest.raises(ChannelError):
        conn.exec("true", timeout=5)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_key_is_auth_failed(testbed, tmp_path, transport):
    wrong = new_key(tmp_path)
    spec, options = direct(testbed, identity_files=(wrong,))
    with pytest.raises(AuthenticationError) as info:
        CONNECT[transport](spec, options)
    assert info.value.phase == "auth"
    assert "'root'" in info.value.message and wrong in info.value.message
    assert SAYS["auth"][transport] in info.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_host_key_is_rejected_then_accept_new_records_it(testbed, tmp_path, transport):
    known = tmp_path / "sub" / "known_hosts"
    spec, options = direct(testbed, known_hosts=str(known))
    with pytest.raises(HostKeyError) as info:
        CONNECT[transport](spec, options)
    assert info.value.phase == "hostkey" and "accept-new" in info.value.message
    assert SAYS["unknown key"][transport] in info.value.message
    assert not known.exists()
    with CONNECT[transport](spec, options.replace(host_key_policy="accept-new")) as conn:
        assert run(conn, "true")[0] == 0
    lines = known.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(testbed.host("node01").address + " ssh-ed25519 ")
    with CONNECT[transport](spec, options) as conn:
        assert conn.is_active()
    assert len(known.read_text().splitlines()) == 1  # nothing appended for a known host


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_changed_host_key_is_rejected_even_with_accept_new(fresh_testbed, transport):
    bed = fresh_testbed(1)
    options = bed.ssh_options()
    with CONNECT[transport](HostSpec("node01"), options):
        pass
    bed.regenerate_host_key("node01")
    for policy in ("strict", "accept-new"):
        with pytest.raises(HostKeyError) as info:
            CONNECT[transport](HostSpec("node01"), options.replace(host_key_policy=policy))
        assert "HOST KEY CHANGED" in info.value.message and "man-in-the-middle" in info.value.message
        assert SAYS["changed key"][transport] in info.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_port_is_a_tcp_error(testbed, transport):
    with pytest.raises(ConnectError) as info:
        CONNECT[transport](HostSpec("node01", port=2), testbed.ssh_options())
    assert type(info.value) is ConnectError and info.value.phase == "tcp"
    assert "Connection refused" in info.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_proxy_jump_goes_through_the_jump_host(testbed, tmp_path, transport):
    options = jump_config(testbed, tmp_path)
    node02 = testbed.host("node02")
    with CONNECT[transport](HostSpec("via-node01"), options) as conn:
        status, out = run(conn, "hostname; echo $SSH_CONNECTION")
        assert status == 0
        name, connection = out.splitlines()
        # node02 sees the connection coming from node01, not from the controller: the jump was used.
        assert name == "node02"
        assert connection.split()[0] == testbed.host("node01").address
        forward = conn.open_forward(node02.address, 22, timeout=30)
        forward.settimeout(30)
        assert forward.recv(4) == b"SSH-"
        forward.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_proxy_jump_failures_name_the_jump_host(testbed, tmp_path, transport):
    extra = (
        "Host via-deadhop\n    HostName 127.0.0.1\n    ProxyJump root@node01:2\n"
        f"Host via-unreachable\n    HostName 127.0.0.1\n    Port 2\n    ProxyJump node01\n"
        f"    IdentityFile {testbed.client_key}\n    UserKnownHostsFile {testbed.known_hosts}\n"
    )
    options = jump_config(testbed, tmp_path, extra)
    with pytest.raises(ConnectError) as info:
        CONNECT[transport](HostSpec("via-deadhop"), options)
    assert info.value.phase == "proxy" and "via jump host node01" in info.value.message
    assert "Connection refused" in info.value.message
    with pytest.raises(ConnectError) as info:
        CONNECT[transport](HostSpec("via-unreachable"), options)
    assert info.value.phase == "proxy"
    assert "jump host node01 cannot reach 127.0.0.1:2" in info.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forward_remote_reaches_a_local_socket_from_the_host(testbed, tmp_path, transport):
    """ssh -R 127.0.0.1:0:SOCKET: a program on the host connects to the allocated port and reaches a server
    listening on a Unix socket on the controller."""
    path = str(tmp_path / "back.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(4)
    server.settimeout(30)
    with server, CONNECT[transport](HostSpec("node01"), testbed.ssh_options()) as conn:
        back = conn.forward_remote(path, timeout=30)
        assert 0 < back.port < 65536
        client = conn.exec(
            f'python3 -c \'import socket; s = socket.create_connection(("127.0.0.1", {back.port})); '
            's.sendall(b"ping"); print(s.recv(16).decode())\'',
            timeout=30,
        )
        accepted, _ = server.accept()
        with accepted:
            accepted.settimeout(30)
            assert accepted.recv(16) == b"ping"
            accepted.sendall(b"pong")
        assert read_all(client).strip() == b"pong"
        client.close()
        back.close()
        back.close()  # idempotent
        # the port is no longer forwarded: a connection to it is refused on the host
        status, _ = run(conn, f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {back.port}))'")
        assert status != 0
