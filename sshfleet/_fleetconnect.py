"""Connect to many hosts at once, at most ``forks`` in flight, one outcome per host.

A host's failure is a value in the result, never an exception: the other hosts' connections must survive it.
Jump hosts are shared between the hosts of one call (see ``JumpPool``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, Union

from sshfleet._options import HostSpec, SshOptions
from sshfleet._ssh import JumpPool, SshConnection, connect
from sshfleet.errors import ConnectError, HostError

log = logging.getLogger("sshfleet.fleet")

Outcome = Union[SshConnection, HostError]


OnResult = Callable[[str, Outcome, float], None]


def _connect_one(spec: HostSpec, options: SshOptions, pool: JumpPool, on_result: Optional[OnResult]) -> Outcome:
    started = time.monotonic()
    outcome: Outcome
    try:
        outcome = connect(spec, options, jump_pool=pool)
    except HostError as exc:
        outcome = exc
    except Exception as exc:  # a bug must cost one host, not the whole fleet's results
        log.exception("[host=%s] unexpected error while connecting", spec.name)
        outcome = ConnectError(spec.name, f"unexpected error: {exc!r}", "tcp")
    if on_result is not None:
        on_result(spec.name, outcome, time.monotonic() - started)
    return outcome


def connect_all(
    specs: Sequence[HostSpec], options: SshOptions, *, on_result: Optional[OnResult] = None
) -> dict[str, Outcome]:
    """Connect to every host of ``specs`` with at most ``options.forks`` connects in flight.

    Returns ``{spec.name: SshConnection or HostError}`` in the order of ``specs``; never raises for a host's
    failure. Every connect is bounded by the connect and auth timeouts, so this returns within about
    ``ceil(len(specs) / forks) * (connect + auth)`` seconds in the worst case. If the caller is interrupted
    (KeyboardInterrupt), the connections already made are closed before the exception propagates.
    ``on_result(name, outcome, seconds)`` is called from a worker thread as each host finishes (for progress).
    """
    if not specs:
        return {}
    pool = JumpPool(options)
    if len(specs) == 1:
        return {specs[0].name: _connect_one(specs[0], options, pool, on_result)}
    outcomes: dict[str, Outcome] = {}
    workers = min(options.forks, len(specs))
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sshfleet-connect")
    futures: list[Future[Outcome]] = []
    try:
        futures = [executor.submit(_connect_one, spec, options, pool, on_result) for spec in specs]
        for spec, future in zip(specs, futures):
            outcomes[spec.name] = future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        _close_when_done(futures)
        raise
    finally:
        executor.shutdown(wait=False)
    return outcomes


def _close_when_done(futures: Sequence[Future[Outcome]]) -> None:
    """On interrupt, close every connection that finishes, including those still connecting."""

    def close(future: Future[Outcome]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if isinstance(result, SshConnection):
            result.close()

    for future in futures:
        future.add_done_callback(close)
