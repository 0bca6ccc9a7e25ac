"""The seed's three agents doing real work on real sshd hosts: an HTTP server, HTTP traffic to it (direct and
through OpenSSH's SOCKS proxy), tcpdump capturing it, archives whose packets we parse; and the example scripts.

Every test is also checked by the leftover hook (tests/conftest.py): once the agents are closed, no tcpdump, HTTP
server or traffic thread may be left on any host.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Callable

import dpkt
import pytest

from agents.http_client_agent import HttpClientAgent
from agents.http_server_agent import HttpServerAgent
from agents.tcpdump_agent import TcpDumpAgent
from sshfleet import UsageError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def _load_reader() -> ModuleType:
    """examples/pcap_reader.py as the module ``pcap_reader`` (examples/ is not a package)."""
    if "pcap_reader" not in sys.modules:
        spec = importlib.util.spec_from_file_location("pcap_reader", EXAMPLES / "pcap_reader.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["pcap_reader"] = module  # before running it: dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["pcap_reader"]


reader = _load_reader()
DEADLINE = 60.0
HTTP = 8080
REQUEST_LINE = re.compile(r"^GET /bytes/\d+ HTTP/1\.1$")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def assert_ok(responses, hosts=None) -> None:
    assert responses.success(), responses.status()
    if hosts is not None:
        assert list(responses) == hosts


def http_requests(path: Path, client: str, server: str) -> list[str]:
    """Request lines of HTTP GETs from client to server on port 8080 in a pcap (possibly still being written)."""
    try:
        packets = [
            p for p in reader.read_pcap(path) if p.protocol == "tcp" and p.between(client, server) and p.uses_port(HTTP)
        ]
    except (OSError, reader.PcapError):
        return []
    return [line for p, line in reader.http_request_lines(iter(packets)) if p.src == client]


@pytest.fixture
def archive() -> Iterator[Path]:
    """A directory in /var/tmp, which the hosts share with the controller (their /tmp is private)."""
    path = Path("/var/tmp") / f"sshfleet-test-{uuid.uuid4().hex[:12]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_experiment_end_to_end(testbed, archive) -> None:
    server, client, observer = testbed.hosts[:3]
    opts = testbed.ssh_options()
    capture_hosts = [server.name, client.name, observer.name]
    with contextlib.ExitStack() as stack:
        apache = stack.enter_context(HttpServerAgent([server.name], ssh_options=opts))
        curl = stack.enter_context(HttpClientAgent([client.name], ssh_options=opts))
        tcpdump = stack.enter_context(TcpDumpAgent(capture_hosts, ssh_options=opts))
        for agent in (apache, curl, tcpdump):
            assert_ok(agent.started)
        assert_ok(apache.StartServer())
        assert_ok(tcpdump.Configure(dumpfile="/tmp/tcpdump.cap", agentlog="/tmp/tcpdump_agent.log"), capture_hosts)
        started = tcpdump.StartCollection(destination=server.address)
        assert_ok(started)
        assert all(f"capturing host {server.address}" in r.comment for r in started.values())
        assert_ok(curl.Configure(sizes="random.randint(1000, 2000)", rate_limit=20))
        assert_ok(curl.StartTraffic(servers=[server.address]))
        # The hosts' /tmp is private but visible from here: watch the live capture instead of sleeping.
        for live in (server.tmp_dir / "tcpdump.cap", client.tmp_dir / "tcpdump.cap"):
            wait_for(lambda p=live: len(http_requests(p, client.address, server.address)) >= 3, f"GETs in {live}")
        stopped = tcpdump.StopCollection()
        assert_ok(stopped)
        # No shared filesystem: each host archives into its session directory, and fetch() brings them home.
        assert_ok(tcpdump.ArchiveDump(path="captures", tag="GTL"))
        fetched = tcpdump.fetch("captures/GTL-*.pcap", archive)
        assert fetched.success(), fetched.status()
        escaped = tcpdump.ArchiveDump(path="../escape", tag="GTL")
        assert all("leaves the session directory" in r.comment for r in escaped.values()), escaped.status()
        traffic = curl.StopTraffic()
        assert_ok(traffic)
        served = apache.StopServer()
        assert_ok(served)
    requests = int(re.search(r"(\d+) ok, 0 failed", traffic[client.name].comment).group(1))
    assert f"served {requests} requests" in served[server.name].comment
    assert sorted(p.relative_to(archive).as_posix() for p in archive.glob("*/*")) == sorted(
        f"{h}/GTL-{h}.pcap" for h in capture_hosts
    )
    for host in (server, client):
        pcap = archive / host.name / f"GTL-{host.name}.pcap"
        packets = list(reader.read_pcap(pcap))
        # tcpdump's own count, our reader and dpkt agree on what the file holds.
        assert f"{len(packets)} packets captured" in stopped[host.name].comment
        with open(pcap, "rb") as f:
            assert len(list(dpkt.pcap.Reader(f))) == len(packets)
        lines = http_requests(pcap, client.address, server.address)
        assert len(lines) >= 3 and all(REQUEST_LINE.match(line) for line in lines), lines
        assert all(server.address in (p.src, p.dst) for p in packets if p.src is not None)
    # On a bridge, the third host sees at most broadcasts about the server (ARP), never the HTTP exchange.
    observed = list(reader.read_pcap(archive / observer.name / f"GTL-{observer.name}.pcap"))
    assert not [p for p in observed if p.protocol == "tcp" and p.uses_port(HTTP)]


def test_stop_collection_without_start_and_other_misuse(testbed, archive) -> None:
    hosts = [h.name for h in testbed.hosts[:2]]
    with TcpDumpAgent(hosts, ssh_options=testbed.ssh_options()) as tcpdump:
        stop = tcpdump.StopCollection()
        assert not stop.success() and set(stop.failed) == set(hosts)
        assert not stop.errors  # answers, not errors: the servicer said no
        assert {r.comment for r in stop.values()} == {"no capture is running: call StartCollection first"}
        assert "call Configure" in tcpdump.StartCollection(destination="198.18.0.1")[hosts[0]].comment
        bad = tcpdump.Configure(dumpfile="/no/such/dir/t.cap")
        assert not bad.success() and "directory /no/such/dir does not exist" in bad[hosts[0]].comment
        assert_ok(tcpdump.Configure(dumpfile="/tmp/t.cap"))
        unknown = tcpdump.StartCollection(destination="no-such-host.invalid")
        assert not unknown.success()
        assert all(r.comment.startswith("tcpdump exited with status 1: ") for r in unknown.values()), unknown.status()
        assert "call StartCollection" in tcpdump.StopCollection()[hosts[0]].comment
        assert_ok(tcpdump.StartCollection(destination=testbed.controller_address))
        twice = tcpdump.StartCollection(destination=testbed.controller_address)
        assert not twice.success() and "already running" in twice[hosts[0]].comment
        assert "StopCollection first" in tcpdump.ArchiveDump(path=str(archive))[hosts[0]].comment
        assert_ok(tcpdump.StopCollection())
        blocked = tcpdump.ArchiveDump(path="/etc/hostname/x", tag="t")
        assert not blocked.success() and "Not a directory" in blocked[hosts[0]].comment
        assert_ok(tcpdump.StartCollection(destination=testbed.controller_address))
    # close() with a capture running must leave no tcpdump behind either (the leftover hook checks).


def test_close_stops_a_running_capture_and_server(testbed) -> None:
    host = testbed.hosts[3]
    opts = testbed.ssh_options()
    with TcpDumpAgent([host.name], ssh_options=opts) as tcpdump, HttpServerAgent([host.name], ssh_options=opts) as web:
        assert_ok(tcpdump.Configure(dumpfile="/tmp/left.cap"))
        assert_ok(tcpdump.StartCollection(destination=testbed.controller_address))
        assert_ok(web.StartServer(port=8081))
        with socket.create_connection((host.address, 8081), timeout=10) as s:
            s.sendall(b"GET /bytes/10 HTTP/1.0\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.0 200")


def test_tcpdump_as_an_unprivileged_user_fails_with_tcpdumps_reason(testbed) -> None:
    host = testbed.hosts[4].name
    with TcpDumpAgent([host], ssh_options=testbed.ssh_options(user="fleet")) as tcpdump:
        assert_ok(tcpdump.Configure(dumpfile="/tmp/fleet.cap"))
        reply = tcpdump.StartCollection(destination=testbed.controller_address)[host]
        assert not reply.success
        assert reply.comment.startswith("tcpdump exited with status 1: ") and "ermission" in reply.comment, reply


def test_http_client_caller_mistakes_fail_fast(testbed) -> None:
    host = testbed.hosts[5].name
    with HttpClientAgent([host], ssh_options=testbed.ssh_options()) as curl:
        with pytest.raises(TypeError, match="sizez"):
            curl.Configure(sizez="1000")
        with pytest.raises(UsageError, match="sizez"):
            curl.call("Configure", sizez="1000")
        with pytest.raises(UsageError, match="rate_limit"):
            curl.Configure(rate_limit="fast")
        with pytest.raises(UsageError, match="servers"):
            curl.StartTraffic(servers="node01")  # a string, not a list of strings
        with pytest.raises(UsageError, match="StartTrafic"):
            curl.call("StartTrafic", servers=["x"])
        # The refused calls never reached the host: it is still unconfigured, with no traffic.
        stop = curl.StopTraffic()[host]
        assert not stop.success and stop.comment == "no traffic is running: call StartTraffic first"


def test_bad_sizes_are_refused_on_every_host(testbed) -> None:
    hosts = [h.name for h in testbed.hosts[5:8]]
    marker = f"/tmp/sshfleet-pwned-{uuid.uuid4().hex[:8]}"
    with HttpClientAgent(hosts, ssh_options=testbed.ssh_options()) as curl:
        hostile = curl.Configure(sizes=f"__import__('os').system('touch {marker}')")
        assert not hostile.success() and set(hostile.failed) == set(hosts) and not hostile.errors
        assert all("is not allowed" in r.comment for r in hostile.values()), hostile.status()
        huge = curl.Configure(sizes="9 ** 9 ** 9")
        assert all("exponent 387420489 is too large" in r.comment for r in huge.values()), huge.status()
        assert_ok(curl.Configure(sizes="random.randint(1000, 2000)"))
    for host in testbed.hosts[5:8]:
        assert not (host.tmp_dir / Path(marker).name).exists()


@contextlib.contextmanager
def openssh_socks_proxy(testbed, via: str) -> Iterator[int]:
    """OpenSSH's own SOCKS4/5 server (``ssh -D``) on the controller's bridge address, tunnelling through ``via``."""
    with socket.socket() as probe:
        probe.bind((testbed.controller_address, 0))
        port = probe.getsockname()[1]
    argv = ["ssh", "-F", str(testbed.ssh_config), "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
    argv += ["-D", f"{testbed.controller_address}:{port}", via]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"ssh -D exited: {proc.stderr.read().decode()}")
            with contextlib.suppress(OSError), socket.create_connection((testbed.controller_address, port), 1):
                return True
            return False

        wait_for(listening, "ssh -D to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()


@pytest.mark.parametrize("version", [4, 5])
def test_traffic_through_openssh_socks_proxy(testbed, version) -> None:
    """node02 sends through ssh -D on the controller, which connects out of node03: the server sees node03."""
    server, client, exit_host = testbed.hosts[:3]
    opts = testbed.ssh_options()
    with contextlib.ExitStack() as stack:
        socks_port = stack.enter_context(openssh_socks_proxy(testbed, exit_host.name))
        apache = stack.enter_context(HttpServerAgent([server.name], ssh_options=opts))
        tcpdump = stack.enter_context(TcpDumpAgent([server.name], ssh_options=opts))
        curl = stack.enter_context(HttpClientAgent([client.name], ssh_options=opts))
        assert_ok(apache.StartServer())
        assert_ok(tcpdump.Configure(dumpfile="/tmp/socks.cap"))
        assert_ok(tcpdump.StartCollection(destination=server.address))
        config = curl.Configure(
            sizes="500",
            rate_limit=10,
            use_socks=True,
            socks_server=testbed.controller_address,
            socks_port=socks_port,
            socks_version=version,
        )
        assert_ok(config)
        assert f"via SOCKS{version} {testbed.controller_address}:{socks_port}" in config[client.name].comment
        assert_ok(curl.StartTraffic(servers=[f"{server.address}:{HTTP}"]))
        live = server.tmp_dir / "socks.cap"
        wait_for(lambda: len(http_requests(live, exit_host.address, server.address)) >= 2, "GETs from the SOCKS exit")
        assert_ok(tcpdump.StopCollection())
        traffic = curl.StopTraffic()
        assert_ok(traffic)
        assert_ok(apache.StopServer())
    assert " 0 failed" in traffic[client.name].comment, traffic.status()
    assert http_requests(live, client.address, server.address) == []  # nothing went direct


def test_change_traffic_while_running(testbed) -> None:
    server, client = testbed.hosts[6:8]
    opts = testbed.ssh_options()
    with (
        HttpServerAgent([server.name], ssh_options=opts) as apache,
        HttpClientAgent([client.name], ssh_options=opts) as curl,
    ):
        assert_ok(apache.StartServer(port=8082))
        assert_ok(curl.Configure(rate_limit=5))
        assert_ok(curl.StartTraffic(servers=[f"{server.address}:8082"]))
        up = curl.ChangeTraffic(stepsize=10)
        assert_ok(up)
        assert up[client.name].comment == "rate 5 -> 15 requests/s"
        down = curl.ChangeTraffic(stepsize=-100)
        assert down[client.name].comment == "rate 15 -> 0 requests/s"
        assert_ok(curl.StopTraffic())
        assert_ok(apache.StopServer())


# --- the example scripts ------------------------------------------------------------------------------------


def run_example(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def test_experiment_example_on_the_session_testbeds_inventory(testbed, archive) -> None:
    server, client, observer = testbed.hosts[:3]
    result = run_example(
        "experiment.py",
        *("-i", str(testbed.inventory), "-F", str(testbed.ssh_config)),
        *("--servers", server.name, "--clients", client.name, "--capture", f"{observer.name}:{server.name}"),
        *("--seconds", "2", "--archive", str(archive), "--tag", "inv"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"apache.StartServer(port=8080)\n  {server.name}  ok: serving on 0.0.0.0:8080" in out
    assert f"curl.StartTraffic(servers=['{server.address}:8080'])" in out
    match = re.search(rf"inv-{server.name}\.pcap +(\d+) packets, +(\d+) HTTP client<->server, (\d+) GETs", out)
    assert match and int(match.group(3)) >= 1, out
    # fetched home into DIR/HOST/ (the hosts archived into their session directories)
    assert (archive / observer.name / f"inv-{observer.name}.pcap").is_file()
    assert (archive / server.name / f"inv-{server.name}.pcap").is_file()


def test_experiment_example_brings_up_and_takes_down_its_own_testbed(archive) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "experiment.py"),
            "--testbed",
            "3",
            "--seconds",
            "2",
            "--archive",
            str(archive),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    name = f"demo{proc.pid:x}"
    assert proc.returncode == 0, out + err
    assert out.startswith(f"testbed {name}: 3 hosts up in ")
    assert "tcpdump on node03, node01" in out
    match = re.search(r"demo-node01\.pcap +(\d+) packets, +(\d+) HTTP client<->server, (\d+) GETs", out)
    assert match and int(match.group(2)) > 0 and int(match.group(3)) > 0, out
    assert out.rstrip().endswith(f"testbed {name}: down")
    assert not Path(f"/tmp/sshfleet-testbed-{name}").exists()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"{name}-" not in namespaces


def test_experiment_example_takes_its_testbed_down_when_interrupted(archive) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "experiment.py"),
            "--testbed",
            "2",
            "--seconds",
            "600",
            "--archive",
            str(archive),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    name = f"demo{proc.pid:x}"
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("... traffic for"):
                break
        else:
            pytest.fail("the experiment did not start its traffic:\n" + "".join(lines) + proc.stderr.read())
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and out.rstrip().endswith(f"testbed {name}: down")
    assert not Path(f"/tmp/sshfleet-testbed-{name}").exists()


def test_tcpdump_capture_example_on_the_session_testbeds_inventory(testbed, archive) -> None:
    hosts = [h.name for h in testbed.hosts[:2]]
    result = run_example(
        "tcpdump_capture.py",
        *("-i", str(testbed.inventory), "-F", str(testbed.ssh_config), *hosts),
        *("--destination", testbed.controller_address, "--seconds", "1", "--archive", str(archive)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for host in hosts:
        assert re.search(rf"GTL-{host}\.pcap: [1-9]\d* packets", result.stdout), result.stdout
    missing = run_example("tcpdump_capture.py", "-i", str(testbed.inventory), "node01")
    assert missing.returncode == 2 and "--destination is required" in missing.stderr
