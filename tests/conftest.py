"""Fixtures shared by the whole suite: the real-sshd testbed, and the leftover check after each testbed test.

* ``testbed``: one 8-host testbed per pytest process (session scope), named after the process so parallel runs
  never meet; torn down at session end, at interpreter exit and on SIGTERM.
* ``fresh_testbed``: a factory for tests that need their own hosts (faults, shared home); torn down after the
  test.
* After every test marked ``testbed``, each testbed it could have touched must become clean (no process but
  sshd in any host's network namespace, no ``~/.cache/sshfleet/sessions`` entry) within 10 s, or the test
  fails naming the host and what was left. Leftovers are then removed so the next test starts clean.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable

import pytest

if TYPE_CHECKING:
    from sshfleet.testbed import Testbed

TESTBED_HOSTS = 8
# How long a host may take to become clean after a test (overridable for the test of the check itself).
LEFTOVER_TIMEOUT = float(os.environ.get("SSHFLEET_TEST_LEFTOVER_TIMEOUT", "10"))
OWNER_FILE = "pytest-owner.pid"
NOT_ROOT = "the testbed needs root (network namespaces, veth, bridge, sshd on port 22)"

# Every testbed this process made and has not taken down yet, whatever happens to the run.
_live: dict[str, Testbed] = {}
_session_bed: list[Testbed] = []
_fresh_key = pytest.StashKey[list["Testbed"]]()
_fresh_counter = itertools.count(1)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _pid_tag() -> str:
    # Five base-36 digits cover every Linux pid (pid_max <= 2**22), so names of two processes never collide.
    return _base36(os.getpid()).rjust(5, "0")


def _down_all() -> None:
    for name, bed in list(_live.items()):
        with contextlib.suppress(Exception):
            bed.down()
        _live.pop(name, None)


atexit.register(_down_all)


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM'd run (CI cancel, `timeout`) should unwind like Ctrl-C, so fixtures and atexit take the
    # testbeds down instead of leaving namespaces and sshd behind.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def _interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _interrupt)


def _reap_orphans() -> None:
    """Take down testbeds left by pytest processes that died without cleaning up (SIGKILL, OOM)."""
    from sshfleet.testbed import Testbed

    for owner in glob.glob(f"/tmp/sshfleet-testbed-*/{OWNER_FILE}"):
        try:
            with open(owner, encoding="ascii") as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        name = os.path.basename(os.path.dirname(owner))[len("sshfleet-testbed-") :]
        with contextlib.suppress(Exception):
            Testbed(name).down()


def _make_testbed(name: str, n: int, shared_home: bool = False) -> Testbed:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    from sshfleet.testbed import Testbed

    bed = Testbed(name, n, shared_home=shared_home)
    _live[name] = bed
    # Mark the testbed as this process's before it exists, so a later run can reap it if we are killed.
    bed.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (bed.state_dir / OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="ascii")
    try:
        bed.up()
    except BaseException:
        _live.pop(name, None)
        raise
    return bed


def _take_down(bed: Testbed) -> None:
    try:
        bed.down()
    finally:
        _live.pop(bed.name, None)


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """The shared 8-host testbed (hosts node01..node08, root and ``fleet`` log in with its client key)."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    _reap_orphans()
    bed = _make_testbed(f"t{_pid_tag()}", TESTBED_HOSTS)
    _session_bed.append(bed)
    try:
        yield bed
    finally:
        _session_bed.clear()
        _take_down(bed)


@pytest.fixture
def fresh_testbed(request: pytest.FixtureRequest) -> Iterator[Callable[..., Testbed]]:
    """Factory ``fresh_testbed(n=3, shared_home=False) -> Testbed``: own hosts, taken down after the test."""
    made: list[Testbed] = []
    request.node.stash[_fresh_key] = made

    def make(n: int = 3, shared_home: bool = False) -> Testbed:
        # "u" + pid tag + counter: unique per process and distinct from the session testbed's "t" names.
        bed = _make_testbed(f"u{_pid_tag()}{_base36(next(_fresh_counter))}", n, shared_home)
        made.append(bed)
        return bed

    try:
        yield make
    finally:
        errors = []
        for bed in made:
            try:
                _take_down(bed)
            except Exception as exc:
                errors.append(f"{bed.name}: {exc}")
        if errors:
            pytest.fail("fresh testbed teardown failed: " + "; ".join(errors), pytrace=False)


def _beds_of(item: pytest.Item) -> list[Testbed]:
    fresh = item.stash.get(_fresh_key, [])
    return [b for b in (*_session_bed, *fresh) if b.subnet is not None]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """The leftover check: runs inside the test's call phase so a dirty host fails *that* test.

    A hook rather than an autouse fixture because a fixture's teardown would report an error, not a failure,
    and would run after ``fresh_testbed`` has already taken its hosts down.
    """
    if item.get_closest_marker("testbed") is None:
        return (yield)
    try:
        result = yield
    except BaseException:
        # The test failed already: remove what it left so the next test is not blamed, keep its own error.
        for bed in _beds_of(item):
            with contextlib.suppress(Exception):
                bed.clean(list(bed.wait_clean(LEFTOVER_TIMEOUT)))
        raise
    report = []
    for bed in _beds_of(item):
        dirty = bed.wait_clean(LEFTOVER_TIMEOUT)
        for host, left in dirty.items():
            report += [f"  [{bed.name} {host}] {what}" for what in left]
        if dirty:
            bed.clean(list(dirty))
    if report:
        pytest.fail(
            f"left behind on the testbed {LEFTOVER_TIMEOUT:g}s after the test:\n" + "\n".join(report),
            pytrace=False,
        )
    return result
