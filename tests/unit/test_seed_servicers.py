"""The TcpDumpAgent and HttpServerAgent servicers in-process, for what needs neither root nor a testbed:
argument checks, wrong call orders and a missing tcpdump answer success=False with a comment, never raise;
the HTTP server serves /bytes/N. Real captures are tested against the testbed (tests/testbed/test_seed_agents.py).
"""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import http_server_agent_pb2 as spb
from agents import tcpdump_agent_pb2 as tpb
from agents import tcpdump_agent_servicer
from agents.http_server_agent_servicer import MAX_BYTES, HttpServerAgentServicer
from agents.tcpdump_agent_servicer import TcpDumpAgentServicer

# --- tcpdump ------------------------------------------------------------------------------------------------


@pytest.fixture
def tcpdump() -> Iterator[TcpDumpAgentServicer]:
    servicer = TcpDumpAgentServicer()
    yield servicer
    servicer.close()


def refused(reply: tpb.Response | spb.Response, *fragments: str) -> None:
    assert not reply.success, reply.comment
    for fragment in fragments:
        assert fragment in reply.comment


def test_calls_before_configure_are_refused(tcpdump: TcpDumpAgentServicer) -> None:
    refused(tcpdump.StartCollection(tpb.StartCollectionArgs(destination="h"), None), "call Configure")
    refused(tcpdump.StopCollection(tpb.StopCollectionArgs(), None), "no capture is running")
    refused(tcpdump.ArchiveDump(tpb.ArchiveDumpArgs(path="/tmp", tag="t"), None), "call Configure")


@pytest.mark.parametrize(
    ("dumpfile", "agentlog", "message"),
    [
        ("", "", "dumpfile is required"),
        ("relative.cap", "", "dumpfile must be an absolute path on the host"),
        ("/no/such/dir/x.cap", "", "dumpfile: directory /no/such/dir does not exist"),
        ("/", "", "is a directory"),
        ("{tmp}/x.cap", "log.txt", "agentlog must be an absolute path"),
        ("{tmp}/x.cap", "{tmp}/x.cap", "agentlog and dumpfile are the same file"),
    ],
)
def test_configure_checks_paths(
    tcpdump: TcpDumpAgentServicer, tmp_path: Path, dumpfile: str, agentlog: str, message: str
) -> None:
    args = tpb.ConfigArgs(dumpfile=dumpfile.format(tmp=tmp_path), agentlog=agentlog.format(tmp=tmp_path))
    refused(tcpdump.Configure(args, None), message)


def test_configure_writes_the_agent_log(tcpdump: TcpDumpAgentServicer, tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    reply = tcpdump.Configure(tpb.ConfigArgs(dumpfile=str(tmp_path / "x.cap"), agentlog=str(log)), None)
    assert reply.success and reply.comment == f"dumpfile {tmp_path / 'x.cap'}, log {log}"
    tcpdump.StopCollection(tpb.StopCollectionArgs(), None)
    assert "no capture is running" in log.read_text()


@pytest.mark.parametrize("destination", ["", "h or port 22", "$(id)", "-i lo"])
def test_destination_must_be_a_host(tcpdump: TcpDumpAgentServicer, tmp_path: Path, destination: str) -> None:
    assert tcpdump.Configure(tpb.ConfigArgs(dumpfile=str(tmp_path / "x.cap")), None).success
    refused(tcpdump.StartCollection(tpb.StartCollectionArgs(destination=destination), None), "destination")
    assert not (tmp_path / "x.cap").exists()


def test_missing_tcpdump_is_a_failed_response(
    tcpdump: TcpDumpAgentServicer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(tcpdump_agent_servicer, "TCPDUMP_DIRS", (str(tmp_path),))
    assert tcpdump.Configure(tpb.ConfigArgs(dumpfile=str(tmp_path / "x.cap")), None).success
    reply = tcpdump.StartCollection(tpb.StartCollectionArgs(destination="198.18.0.1"), None)
    refused(reply, "tcpdump is not installed (not on PATH nor in")


def test_archive_refuses_a_missing_capture_and_bad_tags(
    tcpdump: TcpDumpAgentServicer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = tmp_path / "x.cap"
    assert tcpdump.Configure(tpb.ConfigArgs(dumpfile=str(dump)), None).success
    refused(tcpdump.ArchiveDump(tpb.ArchiveDumpArgs(path=str(tmp_path), tag="t"), None), "no capture file at")
    dump.write_bytes(b"pcap")
    for tag in ("../x", "a/b", ".."):
        refused(tcpdump.ArchiveDump(tpb.ArchiveDumpArgs(path=str(tmp_path), tag=tag), None), "tag must be")
    # A relative path is inside the servicer's session directory (its working directory), never outside it.
    monkeypatch.chdir(tmp_path)
    reply = tcpdump.ArchiveDump(tpb.ArchiveDumpArgs(path="captures", tag="t"), None)
    assert reply.success and (tmp_path / "captures" / f"t-{socket.gethostname()}.pcap").read_bytes() == b"pcap"
    refused(tcpdump.ArchiveDump(tpb.ArchiveDumpArgs(path="../out", tag="t"), None), "leaves the session directory")
    blocker = tmp_path / "file"
    blocker.write_text("")
    reply = tcpdump.ArchiveDump(tpb.ArchiveDumpArgs(path=str(blocker / "sub"), tag="t"), None)
    refused(reply, "cannot archive to", "Not a directory")


def test_archive_copies_into_a_new_directory(tcpdump: TcpDumpAgentServicer, tmp_path: Path) -> None:
    dump = tmp_path / "x.cap"
    assert tcpdump.Configure(tpb.ConfigArgs(dumpfile=str(dump)), None).success
    dump.write_bytes(b"0123456789")
    target = tmp_path / "a" / "b"
    reply = tcpdump.ArchiveDump(tpb.ArchiveDumpArgs(path=str(target), tag="GTL"), None)
    expected = target / f"GTL-{socket.gethostname()}.pcap"
    assert reply.success and reply.comment == f"archived 10 bytes to {expected}"
    assert expected.read_bytes() == b"0123456789" and os.listdir(target) == [expected.name]
    assert tcpdump.ArchiveDump(tpb.ArchiveDumpArgs(path=str(target)), None).success  # no tag: <host>.pcap
    assert (target / f"{socket.gethostname()}.pcap").is_file()


# --- HTTP server ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[tuple[HttpServerAgentServicer, int]]:
    servicer = HttpServerAgentServicer()
    port = free_port()
    reply = servicer.StartServer(spb.StartServerArgs(port=port, address="127.0.0.1"), None)
    assert reply.success and reply.comment == f"serving on 127.0.0.1:{port}"
    yield servicer, port
    servicer.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_http_server_serves_n_bytes(http_server: tuple[HttpServerAgentServicer, int]) -> None:
    servicer, port = http_server
    assert get(port, "/bytes/0") == (200, b"")
    status, body = get(port, "/bytes/200000")
    assert status == 200 and len(body) == 200000 and len(set(body)) > 200  # not a run of one byte
    assert get(port, "/bytes/5?x=1")[1].__len__() == 5
    assert get(port, "/")[0] == 200
    assert get(port, "/nope")[0] == 404
    assert get(port, f"/bytes/{MAX_BYTES + 1}")[0] == 413
    reply = servicer.StopServer(spb.StopServerArgs(), None)
    assert reply.success and reply.comment.startswith("stopped; served 6 requests (2 failed), 200")
    with pytest.raises(OSError):
        get(port, "/bytes/1")


def test_http_server_wrong_orders_and_busy_ports(http_server: tuple[HttpServerAgentServicer, int]) -> None:
    servicer, port = http_server
    refused(servicer.StartServer(spb.StartServerArgs(port=port), None), "already serving on 127.0.0.1")
    other = HttpServerAgentServicer()
    try:
        refused(other.StartServer(spb.StartServerArgs(port=port, address="127.0.0.1"), None), "cannot listen on")
        refused(other.StartServer(spb.StartServerArgs(port=70000), None), "port must be 1-65535")
        refused(other.StopServer(spb.StopServerArgs(), None), "no server is running")
    finally:
        other.close()
