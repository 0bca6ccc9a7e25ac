"""Every ssh_config of the corpus, resolved by sshfleet and by ``ssh -G`` (OpenSSH itself).

Two ways must agree with ssh: the Python reading sshfleet uses when the ``ssh`` binary is absent
(``_sshg.emulate``) must print what ``ssh -G`` prints for every setting sshfleet reads, and ``resolve()`` must give
the same ResolvedHost (jump chains included) whether it asks ``ssh -G`` or reads the file in Python.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sshfleet._options import HostSpec, SshOptions
from sshfleet._ssh import _config, _sshg, resolve
from sshfleet._ssh._sshg import Query
from sshfleet.errors import UsageError
from tests.differential.conftest import CORPUS

CONFIGS = sorted((CORPUS / "ssh_configs").glob("*.conf"))
KEYS = (
    "user",
    "hostname",
    "port",
    "identityfile",
    "certificatefile",
    "userknownhostsfile",
    "globalknownhostsfile",
    "proxyjump",
    "proxycommand",
    "hostkeyalias",
    "identitiesonly",
    "connecttimeout",
    "serveraliveinterval",
    "serveralivecountmax",
    "stricthostkeychecking",
)
_QUERY_RE = re.compile(r"^#\s*query:\s*(\S+)(.*)$", re.M)


def queries(text: str) -> list[Query]:
    """``# query: HOST [user=U] [port=P] [hostname=H]`` lines: what ``ssh -G -l U -p P -o HostName=H HOST``
    is asked."""
    found = []
    for m in _QUERY_RE.finditer(text):
        extra = dict(item.split("=", 1) for item in m.group(2).split())
        port = extra.get("port")
        found.append(Query(m.group(1), None, extra.get("user"), int(port) if port else None, extra.get("hostname")))
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, ssh_binary: str) -> Iterator[dict[Path, Path]]:
    """The corpus with its placeholders filled in; ``Include`` relative to ~/.ssh gets a file of this run there."""
    home = pwd.getpwuid(os.getuid()).pw_dir
    if os.path.realpath(os.path.expanduser("~")) != os.path.realpath(home):
        pytest.fail("HOME must be the password database's home: ssh reads ~ from there, sshfleet from HOME")
    ssh_dir = Path(home) / ".ssh"
    made_dir = not ssh_dir.exists()
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    include = ssh_dir / f"sshfleet-difftest-{os.getpid()}.conf"
    include.write_text((CORPUS / "ssh_configs" / "include.d" / "relative.conf").read_text())
    out = tmp_path_factory.mktemp("ssh_configs")
    mapping = {}
    try:
        for path in CONFIGS:
            text = path.read_text()
            text = text.replace("{corpus}", str(CORPUS / "ssh_configs"))
            text = text.replace("{ssh_include}", include.name).replace("{local_user}", getpass.getuser())
            target = out / path.name
            target.write_text(text)
            mapping[path] = target
        yield mapping
    finally:
        include.unlink()
        if made_dir:
            ssh_dir.rmdir()


def ask_ssh(query: Query, ssh: str) -> dict[str, list[str]] | str:
    try:
        return _sshg._run(query, ssh)
    except UsageError as exc:
        return f"error: {exc}"


def ask_python(query: Query) -> dict[str, list[str]] | str:
    try:
        return _sshg.emulate(query)
    except UsageError as exc:
        return f"error: {exc}"


def test_the_corpus_is_large_enough() -> None:
    assert len(CONFIGS) >= 20
    assert sum(len(queries(p.read_text())) for p in CONFIGS) >= 60


@pytest.mark.parametrize("source", CONFIGS, ids=lambda p: p.name)
def test_python_reading_prints_what_ssh_G_prints(source: Path, rendered: dict[Path, Path], ssh_binary: str) -> None:
    config = str(rendered[source])
    for base in queries(source.read_text()):
        query = Query(base.host, config, base.user, base.port, base.hostname)
        theirs, ours = ask_ssh(query, ssh_binary), ask_python(query)
        if isinstance(theirs, str) or isinstance(ours, str):
            assert isinstance(theirs, str) and isinstance(ours, str), f"{query}: ssh {theirs!r}, sshfleet {ours!r}"
            continue
        for key in KEYS:
            assert ours.get(key) == theirs.get(key), (
                f"{query.host} {key}: ssh {theirs.get(key)}, sshfleet {ours.get(key)}"
            )


@pytest.mark.parametrize("source", CONFIGS, ids=lambda p: p.name)
def test_resolve_is_the_same_with_and_without_the_ssh_binary(
    source: Path, rendered: dict[Path, Path], ssh_binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = SshOptions(ssh_config=str(rendered[source]), look_for_keys=False)
    for query in queries(source.read_text()):
        spec = HostSpec(query.host, hostname=query.hostname, port=query.port, user=query.user)
        results = []
        for binary in (ssh_binary, ""):
            monkeypatch.setattr(_sshg, "SSH_BINARY", binary)
            try:
                results.append(resolve(spec, options))
            except UsageError as exc:
                results.append(type(exc))
        assert results[0] == results[1], query


# --- random configs ------------------------------------------------------------------------------------------

_PATTERNS = ["a", "b", "web1", "web[12]", "*", "!a", "w*", "a?", "A", "real.example", "REAL.example"]
_SETTINGS = [
    "User u1",
    'User "u 2"',
    "User u3 # a comment",
    "User=u4",
    "Port 2201",
    "Port = 2202",
    "HostName %h.x",
    "HostName real.example",
    "HostName 100%%.x",
    "HostName UPPER.Example",
    "IdentityFile ~/.ssh/id_%r_%h",
    "IdentityFile %d/k_%p_%n",
    "IdentityFile ~/.ssh/k#1",
    "UserKnownHostsFile ~/.ssh/kh_%r_%h %d/kh2_%C",
    "UserKnownHostsFile /dev/null",
    "ProxyJump j1",
    "ProxyJump none",
    "ProxyJump u@j2:2222,j3",
    "HostKeyAlias alias_%h",
    "HostKeyAlias plain-alias",
    "ConnectTimeout 5",
    "StrictHostKeyChecking accept-new",
    "StrictHostKeyChecking no",
    "IdentitiesOnly yes",
    "ServerAliveInterval 9",
    "CertificateFile ~/.ssh/cert_%r",
]
_BLOCKS = st.one_of(
    st.lists(st.sampled_from(_PATTERNS), min_size=1, max_size=3).map(lambda p: "Host " + " ".join(p)),
    st.sampled_from(
        [
            "Match all",
            "Match host real.example",
            "Match host *.x",
            "Match !host a",
            "Match originalhost a,web*",
            "Match user u1",
            "Match user root,u*",
            "Match final",
            "Match final host real.example",
            "Match canonical",
            'Match exec "true"',
            'Match exec "test %h = a"',
        ]
    ),
)


@st.composite
def _config_text(draw: st.DrawFn) -> str:
    lines = [f"  {s}" for s in draw(st.lists(st.sampled_from(_SETTINGS), max_size=3))]
    for _ in range(draw(st.integers(1, 5))):
        lines.append(draw(_BLOCKS))
        lines += [f"  {s}" for s in draw(st.lists(st.sampled_from(_SETTINGS), min_size=1, max_size=4))]
    return "\n".join(lines) + "\n"


_QUERIES = st.lists(
    st.builds(
        Query,
        st.sampled_from(["a", "b", "web1", "web[12]", "A", "w9", "real.example"]),
        st.none(),
        st.sampled_from([None, None, "u1", "root"]),
        st.sampled_from([None, None, 2300]),
        st.sampled_from([None, None, "real.example"]),
    ),
    min_size=1,
    max_size=3,
)


@settings(
    max_examples=int(os.environ.get("SSHFLEET_FUZZ_EXAMPLES", "60")),
    derandomize=bool(os.environ.get("CI")),  # the same examples every CI run; new ones elsewhere
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=_config_text(), asked=_QUERIES)
def test_random_configs_read_as_ssh_G_reads_them(
    tmp_path_factory: pytest.TempPathFactory, ssh_binary: str, text: str, asked: list[Query]
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config"
    path.write_text(text)
    for base in asked:
        query = Query(base.host, str(path), base.user, base.port, base.hostname)
        theirs, ours = ask_ssh(query, ssh_binary), ask_python(query)
        if isinstance(theirs, str) or isinstance(ours, str):
            assert isinstance(theirs, str) and isinstance(ours, str), f"{query}: ssh {theirs!r}, sshfleet {ours!r}"
            continue
        for key in KEYS:
            assert ours.get(key) == theirs.get(key), f"{query} {key}: ssh {theirs.get(key)}, sshfleet {ours.get(key)}"


# --- the jump host ssh itself would run ------------------------------------------------------------------------

_PROXY_RE = re.compile(r"Executing proxy command: exec (.*)$")


def ssh_proxy_command(query: Query, ssh: str) -> list[str] | None:
    """The ``ssh -W`` command ssh runs to reach ``query``'s first jump host (ProxyJump, tokens expanded), read
    from ``ssh -v``; ssh is stopped as soon as it says it, before any connection matters."""
    argv = [ssh, "-v", "-F", str(query.config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=2"]
    if query.user is not None:
        argv += ["-l", query.user]
    if query.port is not None:
        argv += ["-p", str(query.port)]
    if query.hostname is not None:
        argv += ["-o", f"HostName={query.hostname}"]
    proc = subprocess.Popen(
        [*argv, "--", query.host, "true"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    found = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            m = _PROXY_RE.search(line)
            if m:
                found = shlex.split(m.group(1))
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return found


@pytest.mark.parametrize("source", [p for p in CONFIGS if "ProxyJump" in p.read_text()], ids=lambda p: p.name)
def test_the_first_jump_is_the_one_ssh_runs(source: Path, rendered: dict[Path, Path], ssh_binary: str) -> None:
    config = str(rendered[source])
    options = SshOptions(ssh_config=config, look_for_keys=False)
    checked = refused = 0
    for base in queries(source.read_text()):
        query = Query(base.host, config, base.user, base.port, base.hostname)
        try:
            resolved, jump = _config._resolve_one(
                HostSpec(query.host, hostname=query.hostname, port=query.port, user=query.user), options
            )
        except UsageError:
            refused += 1  # ssh refuses it too: test_python_reading_prints_what_ssh_G_prints checks that
            continue
        command = ssh_proxy_command(query, ssh_binary)
        if jump is None:
            assert command is None, f"{query.host}: ssh runs {command}, sshfleet sees no jump"
            continue
        assert command is not None, f"{query.host}: sshfleet jumps through {jump}, ssh runs no proxy command"
        flags: dict[str, str] = {}
        i = 1
        while i < len(command) - 1:
            if command[i] == "-v":
                i += 1
                continue
            flags[command[i]] = command[i + 1]
            i += 2
        hops = _config._parse_jumps(jump, config)
        last = hops[-1]
        assert (last.name, last.user, last.port) == (
            command[-1],
            flags.get("-l"),
            int(flags["-p"]) if "-p" in flags else None,
        ), f"{query.host}: ssh {command}"
        assert flags.get("-J") == (",".join(map(_config._hop_label, hops[:-1])) or None), command
        assert flags["-W"] == f"[{resolved.hostname}]:{resolved.port}", command
        checked += 1
    assert checked or refused, "no query of this file goes through a jump host"
