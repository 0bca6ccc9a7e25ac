"""The one I/O thread of the controller: an asyncio loop that pumps every tunnel and runs every gRPC call.

Why one loop: a thread per tunnel per direction (the obvious design) costs a context switch per packet and
grows with the fleet. Here each host costs only paramiko's own transport thread; the pumping of all forwards
(``sshfleet._ssh._forward``), the heartbeats of all servicers and the grpc.aio calls of all hosts share this loop.
Standard library only: every layer may use it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, Callable, Optional, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Hub:
    """The process-wide I/O loop, started on first use, stopped at interpreter exit."""

    _instance: Optional[Hub] = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sshfleet-io", daemon=True)
        self._thread.start()

    @classmethod
    def get(cls) -> Hub:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = Hub()
            return cls._instance

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
        """Run ``coro`` on the loop and wait for it (from any other thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except (concurrent.futures.TimeoutError, KeyboardInterrupt):
            future.cancel()
            raise

    def call(self, fn: Callable[[], T], timeout: Optional[float] = None) -> T:
        """Run a plain function on the loop thread (for objects that must only be touched there)."""
        if self.in_loop():
            return fn()

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(2)


@atexit.register
def _stop_hub() -> None:
    if Hub._instance is not None:
        Hub._instance.stop()
