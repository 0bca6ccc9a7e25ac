"""Agents run on the host Pythons that testbed images ship (pyenv's interpreters stand in for them): each host
gets the newest grpcio/protobuf published for its Python and gencode adapted to them; a mixed fleet starts in one
call; when `python3` is broken, discovery finds another interpreter and says which.

The first run per Python downloads its wheels into ~/.cache/sshfleet/controller/wheelhouse (about 6-7 MB each);
later runs reuse them. pyenv lives under /root, which the `fleet` user cannot enter: the old-Python tests log in
as root, and `fleet` is tested with the interpreters it can run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import pytest

import sshfleet
from agents.exec_agent import ExecAgent
from agents.sysinfo import SysinfoAgent
from sshfleet import Timeouts
from sshfleet.errors import RemotePythonError

REPO = Path(__file__).resolve().parents[2]
PYENV = Path(os.environ.get("PYENV_ROOT") or "/root/.pyenv") / "versions"
# Host Pythons the controller's grpcio/protobuf no longer support: they get older releases and adapted gencode.
OLD_PYTHONS = [(3, 6), (3, 7), (3, 8), (3, 9)]
COLD = Timeouts(bootstrap=300)  # a first start per Python downloads its wheels


def pyenv_python(minor: int) -> str:
    found = sorted(PYENV.glob(f"3.{minor}.*/bin/python3"))
    if not found:
        pytest.skip(f"no Python 3.{minor} under {PYENV}")
    return str(found[-1])


def version_of(python: str) -> str:
    return subprocess.check_output([python, "-c", "import platform; print(platform.python_version())"], text=True)


def facts(agent: sshfleet.Agent, host: str) -> dict:
    """What the bootstrap and the runtime reported when the servicer started on ``host``."""
    process = agent._hosts[host].process
    assert process is not None
    return process.facts


@pytest.mark.parametrize("python_version", OLD_PYTHONS, ids=lambda v: f"py{v[0]}{v[1]}")
def test_builtin_agents_run_on_an_old_host_python(testbed, python_version):
    python = pyenv_python(python_version[1])
    hosts = [h.name for h in testbed.hosts[:2]]
    with SysinfoAgent(hosts, ssh_options=testbed.ssh_options(), python=python, timeouts=COLD) as agent:
        assert agent.started.success(), agent.started.status()
        replies = agent.Uname()
        assert replies.success(), replies.status()
        assert {r.python_version for r in replies.values()} == {version_of(python).strip()}
        chunks = sorted((host, chunk.index) for host, chunk in agent.Count(n=3, size=10))
        assert chunks == sorted((h, i) for h in hosts for i in range(3))
        for host in hosts:
            reported = facts(agent, host)
            assert reported["interpreter"] == python and not reported["discovered"]
            # Older grpcio/protobuf than the controller's: the adapted gencode is what runs.
            assert reported["compat_gencode"], reported
            assert reported["grpcio"] != _installed("grpcio") and reported["protobuf"] != _installed("protobuf")
    with ExecAgent(hosts, ssh_options=testbed.ssh_options(), python=python) as runner:
        replies = runner.Run(["sh", "-c", "echo $0", "hello"], timeout=30)
        assert replies.success(), replies.status()
        assert {r.stdout for r in replies.values()} == {b"hello\n"}


def _installed(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


@pytest.mark.parametrize("python_version", OLD_PYTHONS, ids=lambda v: f"py{v[0]}{v[1]}")
def test_a_freshly_generated_agent_runs_on_an_old_host_python(testbed, tmp_path, python_version):
    """load_agent() from a proto importing a well-known type: its pb2 builds on the host's older protobuf."""
    python = pyenv_python(python_version[1])
    minor = python_version[1]  # protobuf keeps one registry per process: one package per Python
    proto = tmp_path / f"old_py{minor}_agent.proto"
    proto.write_text(
        f'syntax = "proto3";\npackage oldpy{minor};\nimport "google/protobuf/timestamp.proto";\n'
        "service OldPyAgent { rpc Ping(PingArgs) returns (Response) {} }\n"
        "message PingArgs { string word = 1; google.protobuf.Timestamp at = 2; Mood mood = 3; Inner inner = 4;\n"
        "  message Inner { enum Depth { SHALLOW = 0; DEEP = 1; } Depth depth = 1; } }\n"
        "enum Mood { CALM = 0; CURIOUS = 1; }\n"
        "message Response { bool success = 1; string comment = 2; }\n"
    )
    agent_class = sshfleet.load_agent(str(proto))
    host = testbed.hosts[2].name
    with agent_class([host], ssh_options=testbed.ssh_options(), python=python, timeouts=COLD) as agent:
        assert agent.started.success(), agent.started.status()
        replies = agent.Ping(word="hi", mood="CURIOUS", inner={"depth": "DEEP"})
        assert not replies.errors, replies.status()
        assert replies[host].comment == "Not implemented."
        assert facts(agent, host)["python"] == version_of(python).strip()


def test_a_mixed_fleet_starts_in_one_call_from_an_inventory(testbed, tmp_path):
    """ansible_python_interpreter per host: 3.8, 3.9, the system 3.11 and 3.13 at once, each with its bundle."""
    pythons = [pyenv_python(8), pyenv_python(9), "/usr/bin/python3", pyenv_python(13)]
    hosts = testbed.hosts[:4]
    lines = ["[mixed]"]
    lines += [f"{h.name} ansible_host={h.address} ansible_python_interpreter={p}" for h, p in zip(hosts, pythons)]
    inventory = tmp_path / "mixed.ini"
    inventory.write_text("\n".join(lines) + "\n")
    expected = {h.name: version_of(p).strip() for h, p in zip(hosts, pythons)}
    for h in hosts:  # cold: nothing cached on the hosts (the controller's wheelhouse may be warm)
        cache = h.cache_dirs["root"] / "sshfleet"
        for entry in cache.iterdir() if cache.is_dir() else ():
            if entry.name != "sessions":
                shutil.rmtree(entry)
    for round_ in ("cold", "warm"):
        agent = SysinfoAgent.from_inventory(str(inventory), "mixed", ssh_options=testbed.ssh_options(), timeouts=COLD)
        with agent:
            assert agent.started.success(), agent.started.status()
            replies = agent.Uname()
            assert replies.success(), replies.status()
            assert {h: r.python_version for h, r in replies.items()} == expected
            reported = {h: facts(agent, h) for h in expected}
            assert {h: f["interpreter"] for h, f in reported.items()} == {h.name: p for h, p in zip(hosts, pythons)}
            shipped = {h: sorted(info["shipped"]) for h, info in agent.started.items()}
            assert shipped == {h: ["agent", "deps"] if round_ == "cold" else [] for h in expected}
    # 3.8 and 3.9 get the newest grpcio/protobuf they have, older than the controller's; 3.11 and 3.13 its own.
    controller = (_installed("grpcio"), _installed("protobuf"))
    runtimes = [(reported[h.name]["grpcio"], reported[h.name]["protobuf"]) for h in hosts]
    assert runtimes[0] != controller and runtimes[1] != controller and runtimes[0] != runtimes[1]
    assert runtimes[2] == runtimes[3] == controller


@pytest.fixture
def login_path(testbed) -> Iterator[Callable[..., tuple[str, str]]]:
    """``login_path(user, python3=...)``: on one host, that user's PATH starts with a fresh directory holding
    ``python3`` (a script's text, a symlink target, or None: no python3), and nothing else when ``only=True``.

    The directory lives in that host's private /tmp, and the user's ~/.bashrc (which bash reads for an ssh
    command) puts it first only where it exists, so no other host sees it; both are removed afterwards.
    """
    host = testbed.hosts[3]
    made: list[tuple[Path, Path, str]] = []

    def make(user: str, python3: Optional[str], *, link: bool = False, only: bool = False) -> tuple[str, str]:
        name = f"sshfleet-path-{uuid.uuid4().hex[:8]}"
        bindir = host.tmp_dir / name
        bindir.mkdir()
        os.chmod(bindir, 0o755)
        if python3 is not None and link:
            (bindir / "python3").symlink_to(python3)
        elif python3 is not None:
            (bindir / "python3").write_text(python3)
            (bindir / "python3").chmod(0o755)
        bashrc = Path("/root/.bashrc" if user == "root" else f"/home/{user}/.bashrc")
        path = f"/tmp/{name}" if only else f"/tmp/{name}:$PATH"
        line = f'[ -d /tmp/{name} ] && PATH="{path}"  # {name}\n'
        text = bashrc.read_bytes()
        # Debian's user .bashrc returns at once for a non-interactive shell: go first there; root's runs to the
        # end and puts pyenv's shims first: go last.
        bashrc.write_bytes(line.encode() + text if b"*) return;;" in text else text + line.encode())
        made.append((bindir, bashrc, name))
        return host.name, name

    yield make
    for bindir, bashrc, name in made:
        bashrc.write_bytes(re.sub(rb"^.*# " + name.encode() + rb"\n", b"", bashrc.read_bytes(), flags=re.M))
        shutil.rmtree(bindir, ignore_errors=True)


BROKEN = "#!/bin/sh\necho 'python3: this one is broken on purpose' >&2\nexit 1\n"


def test_discovery_finds_a_working_python_when_python3_is_broken(testbed, login_path):
    host, name = login_path("fleet", BROKEN)
    options = testbed.ssh_options("fleet")
    with ExecAgent([host], ssh_options=options) as probe:
        which = probe.Run(shell="command -v python3; python3 -c 'print(1)'", timeout=30)
    # The ExecAgent itself needed discovery: the login's python3 is the broken one.
    assert which[host].stdout.decode().splitlines()[0] == f"/tmp/{name}/python3"
    assert which[host].exit_code != 0
    with SysinfoAgent([host], ssh_options=options) as agent:
        assert agent.started.success(), agent.started.status()
        reported = facts(agent, host)
        assert reported["discovered"] and reported["interpreter"] == "/usr/bin/python3"
        assert agent.Uname()[host].python_version == version_of("/usr/bin/python3").strip()


def test_discovery_when_there_is_no_python3_on_the_path(testbed, login_path):
    host, _ = login_path("fleet", None, only=True)
    with SysinfoAgent([host], ssh_options=testbed.ssh_options("fleet")) as agent:
        assert agent.started.success(), agent.started.status()
        reported = facts(agent, host)
        assert reported["discovered"] and reported["interpreter"] == "/usr/bin/python3"
        assert agent.Uname().success()


def test_discovery_when_python3_is_too_old(testbed, login_path):
    """root's python3 is Python 2.7 (as on old images): it is told it is too old, and discovery goes on."""
    python2 = PYENV / "2.7.18" / "bin" / "python2.7"
    if not python2.exists():
        pytest.skip("no Python 2.7 under pyenv")
    host, _ = login_path("root", str(python2), link=True)
    with SysinfoAgent([host], ssh_options=testbed.ssh_options()) as agent:
        assert agent.started.success(), agent.started.status()
        reported = facts(agent, host)
        assert reported["discovered"] and reported["interpreter"] == "/usr/bin/python3"


def test_a_named_interpreter_is_not_replaced_by_discovery(testbed, login_path):
    host, name = login_path("fleet", BROKEN)
    with SysinfoAgent([host], ssh_options=testbed.ssh_options("fleet"), python=f"/tmp/{name}/python3") as agent:
        error = agent.started[host]
        assert isinstance(error, RemotePythonError), agent.started.status()
        assert f"/tmp/{name}/python3" in error.message and "broken on purpose" in error.message


def test_a_python_older_than_any_wheel_is_a_clear_error(testbed):
    """Python 2.7 cannot even run the bootstrap: a per-host error naming the interpreter, no discovery."""
    python = str(PYENV / "2.7.18" / "bin" / "python")
    if not os.path.exists(python):
        pytest.skip("no Python 2.7 under pyenv")
    host = testbed.hosts[0].name
    with SysinfoAgent([host], ssh_options=testbed.ssh_options(), python=python) as agent:
        error = agent.started[host]
        assert isinstance(error, RemotePythonError), agent.started.status()
        assert python in error.message and "sshfleet needs Python >= " in error.message


def test_the_seed_experiment_runs_unchanged_on_a_mixed_fleet(testbed, tmp_path):
    """examples/experiment.py with an inventory whose hosts run 3.8 (server), 3.9 and 3.13 (clients) and 3.6
    (tcpdump beside the server's own)."""
    server, client, observer, other_client = testbed.hosts[4:8]
    pythons = [(server, 8), (client, 9), (observer, 6), (other_client, 13)]
    inventory = tmp_path / "mixed.ini"
    lines = [f"{h.name} ansible_host={h.address} ansible_python_interpreter={pyenv_python(m)}" for h, m in pythons]
    inventory.write_text("[all]\n" + "\n".join(lines) + "\n")
    archive = Path("/var/tmp") / f"sshfleet-test-{uuid.uuid4().hex[:12]}"  # where the captures come home
    argv = [
        sys.executable,
        str(REPO / "examples" / "experiment.py"),
        "-i",
        str(inventory),
        "-F",
        str(testbed.ssh_config),
    ]
    argv += ["--servers", server.name, "--clients", f"{client.name}:{other_client.name}"]
    argv += ["--capture", f"{observer.name}:{server.name}", "--seconds", "2", "--archive", str(archive), "--tag", "mix"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=280, cwd=REPO, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stdout + result.stderr
        counts = rf"mix-{server.name}\.pcap +(\d+) packets, +(\d+) HTTP client<->server, (\d+) GETs"
        match = re.search(counts, result.stdout)
        assert match and int(match.group(3)) >= 1, result.stdout
        assert (archive / observer.name / f"mix-{observer.name}.pcap").is_file()  # fetched home as DIR/HOST/
    finally:
        shutil.rmtree(archive, ignore_errors=True)
