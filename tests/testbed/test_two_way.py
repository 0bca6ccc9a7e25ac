"""Host -> controller calls (the Vortex seed's two directions) on the testbed: servicers call the controller's
service through their own SSH connection, with their own secret; nothing else on the host can."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import sshfleet
from sshfleet import Fleet, UsageError
from sshfleet.errors import HostError

pytestmark = pytest.mark.testbed
PROTO = Path(__file__).parent / "protos" / "report.proto"
# Run on a host as the unprivileged user `fleet`, with a copy of the servicer's grpc: call the controller.
OTHER_USER_PROBE = """
import sys
import grpc
report = grpc.insecure_channel("127.0.0.1:" + sys.argv[1]).unary_unary("/reporttest.ReportAgentController/Report")
try:
    report(b"", timeout=10)
    print("ANSWERED")
except grpc.RpcError as exc:
    print(exc.code().name)
"""


@pytest.fixture(scope="module")
def report_class():
    return sshfleet.load_agent(str(PROTO))


def controller_base(agent_class):
    return agent_class._pb2_grpc.ReportAgentControllerServicer


def make_controller(agent_class, on_report=None):
    pb = agent_class._pb2

    class Controller(controller_base(agent_class)):
        def __init__(self) -> None:
            self.reports: list[tuple[str, int, str, str]] = []
            self.lock = threading.Lock()

        def Report(self, request, context):
            host = sshfleet.calling_host(context)
            with self.lock:
                self.reports.append((host, request.step, request.note, threading.current_thread().name))
            if on_report is not None:
                on_report(host, request)
            return pb.Ack(ok=True)

    return Controller()


def test_forty_reports_from_eight_hosts_during_one_fan_out(testbed, report_class):
    hosts = [h.name for h in testbed.hosts]
    controller = make_controller(report_class)
    with report_class(hosts, ssh_options=testbed.ssh_options(), controller=controller) as agent:
        replies = agent.Run(count=5)  # the controller waits in this fan-out while every servicer calls back
        assert replies.success(), replies.status()
        assert {r.acked for r in replies.values()} == {5}
        assert len(controller.reports) == 40
        assert Counter(host for host, _, _, _ in controller.reports) == dict.fromkeys(hosts, 5)
        # calling_host() names the host whose servicer called: the servicer put its own hostname in the note
        assert all(host == note for host, _, note, _ in controller.reports)
        assert {step for _, step, _, _ in controller.reports} == {1, 2, 3, 4, 5}
        # handlers ran on the controller service's threads: not the I/O thread, not the caller's
        threads = {thread for _, _, _, thread in controller.reports}
        assert all(t.startswith("sshfleet-controller") for t in threads), threads


def test_nothing_but_the_stub_is_answered(testbed, report_class, tmp_path):
    hosts = [h.name for h in testbed.hosts[:2]]
    controller = make_controller(report_class)
    with report_class(hosts, ssh_options=testbed.ssh_options(), controller=controller) as agent:
        for host in hosts:
            port = agent._hosts[host].reverse.port
            # a process of the login user that was not handed the stub: no secret, a wrong one
            reply = agent.call("Probe", port=port)[host]
            assert reply.comment == "UNAUTHENTICATED,UNAUTHENTICATED", reply.comment
            # another Unix user on the host, with grpc, on the same port
            deps = f"/tmp/grpc-for-fleet-{os.getpid()}"
            out = testbed.run(
                host,
                f"mkdir -p {deps} && cp -r {reply.grpc_dir}/. {deps}/ && chmod -R a+rX {deps} && "
                f"cat > {deps}/probe.py <<'EOF'\n{OTHER_USER_PROBE}EOF\n"
                f"runuser -u fleet -- env PYTHONPATH={deps} python3 {deps}/probe.py {port}; rm -rf {deps}",
            )
            assert out.stdout.strip().splitlines()[-1] == "UNAUTHENTICATED", out.stdout + out.stderr
        assert controller.reports == []  # none of those reached the handler
        # on the controller, the service's socket is in a 0700 directory: another user cannot even connect
        path = agent._controller.path
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        other = subprocess.run(
            [
                "runuser",
                "-u",
                "fleet",
                "--",
                "python3",
                "-c",
                f"import socket; socket.socket(socket.AF_UNIX).connect({path!r})",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert other.returncode != 0 and "PermissionError" in other.stderr


def test_close_with_calls_in_flight_ends_them_per_host(testbed, report_class):
    hosts = [h.name for h in testbed.hosts[:3]]
    entered = threading.Semaphore(0)
    release = threading.Event()

    def hold(host, request):
        entered.release()
        release.wait(60)

    controller = make_controller(report_class, on_report=hold)
    with Fleet(hosts, ssh_options=testbed.ssh_options()) as fleet:
        agent = fleet.start(report_class, controller=controller)
        future = agent.Run.future(count=1, timeout=60)
        try:
            for _ in hosts:
                assert entered.acquire(timeout=30)  # every servicer is inside a call to the controller
            started = time.monotonic()
            agent.close()
            responses = future.result(timeout=30)
            assert time.monotonic() - started < 30
            assert set(responses) == set(hosts)
            assert all(isinstance(outcome, HostError) for outcome in responses.values()), responses.status()
        finally:
            release.set()


def test_controller_must_match_the_proto(testbed, report_class):
    from agents.sysinfo import SysinfoAgent

    with Fleet([testbed.hosts[0].name], ssh_options=testbed.ssh_options()) as fleet:
        with pytest.raises(UsageError, match="ReportAgentControllerServicer"):
            report_class(fleet, controller=object())
        with pytest.raises(UsageError, match="no SysinfoAgentController service"):
            SysinfoAgent(fleet, controller=object())
        # without controller=, the servicer gets no stub and says so
        agent = report_class(fleet)
        assert agent.Run(count=1)[testbed.hosts[0].name].comment == "no controller stub"


def test_http_clients_report_their_traffic_to_the_controller_live(testbed):
    """The built-in example: examples/live_reports.py prints each client's report as it arrives."""
    repo = Path(__file__).resolve().parents[2]
    server, *clients = testbed.hosts[:3]
    args = ["-i", str(testbed.inventory), "-F", str(testbed.ssh_config), "--servers", server.name]
    args += ["--clients", ":".join(c.name for c in clients), "--seconds", "3"]
    result = subprocess.run(
        [sys.executable, str(repo / "examples" / "live_reports.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=repo,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for client in clients:
        lines = [line for line in result.stdout.splitlines() if line.strip().startswith(f"[{client.name}]")]
        assert len(lines) >= 2, result.stdout  # one a second, while 3 s of traffic ran
        counts = [int(line.split("s ", 1)[1].split()[0]) for line in lines]
        assert counts == sorted(counts) and counts[-1] > 0  # live and growing
    assert f"from {len(clients)} of {len(clients)} clients" in result.stdout
