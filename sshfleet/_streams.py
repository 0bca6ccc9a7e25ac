"""Streaming calls: the replies of every host's stream, merged into one iterator (API layer)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import grpc
import grpc.aio

from sshfleet._lifelines import HostAgent
from sshfleet._messages import build_request
from sshfleet._responses import Outcome
from sshfleet.errors import CallTimeout


class StreamCall(Iterator[tuple[str, Outcome]]):
    """What ``Agent.call_stream()`` returns: the streams of all hosts merged into one iterator of
    ``(host, reply)``, a failed host yielding ``(host, HostError)`` once. The pumping runs on the hub loop.

    ``cancel()`` ends every host's call at once (the servicers see the call cancelled); iteration then stops.
    """

    _DONE = object()

    def __init__(self, agent: Any, method: Any, request: Any, requests: Optional[Iterable[Any]], deadline: float):
        self.agent = agent
        self.queue: queue.Queue[Any] = queue.Queue()
        self.pending = 0
        states = list(agent._hosts.values())
        self.pending = len(states)
        self.request_cls = agent._pb2_message(method.input_type)
        self.future = asyncio.run_coroutine_threadsafe(
            self._run(method, request, requests, deadline, states), agent._hub.loop
        )
        self.deadline = time.monotonic() + deadline + 30

    async def _run(
        self,
        method: Any,
        request: Any,
        requests: Optional[Iterable[Any]],
        deadline: float,
        states: list[HostAgent],
    ) -> None:
        loop = asyncio.get_running_loop()
        feeds: list[asyncio.Queue[Any]] = []
        if requests is not None:
            feeds = [asyncio.Queue() for _ in states]

            def read_requests() -> None:
                try:
                    for item in requests:
                        msg = (
                            item
                            if hasattr(item, "DESCRIPTOR")
                            else build_request(self.request_cls, item, method=method.name)
                        )
                        for feed in feeds:
                            loop.call_soon_threadsafe(feed.put_nowait, msg)
                finally:
                    for feed in feeds:
                        loop.call_soon_threadsafe(feed.put_nowait, self._DONE)

            threading.Thread(target=read_requests, name="sshfleet-requests", daemon=True).start()

        async def feed_iter(feed: asyncio.Queue[Any]) -> Any:
            while (item := await feed.get()) is not self._DONE:
                yield item

        async def one(index: int, state: HostAgent) -> None:
            try:
                if state.error is not None:
                    self.queue.put((state.host, state.error))
                    return
                mc = self.agent._multicallable(state, method)
                arg = feed_iter(feeds[index]) if feeds else request
                call = mc(arg, timeout=deadline, metadata=state.metadata)
                if method.server_streaming:
                    async for reply in call:
                        self.queue.put((state.host, reply))
                else:
                    self.queue.put((state.host, await call))
            except grpc.aio.AioRpcError as exc:
                self.queue.put((state.host, self.agent._rpc_error(state, method.name, exc)))
            finally:
                self.queue.put(self._DONE)

        await asyncio.gather(*(one(i, s) for i, s in enumerate(states)))

    def __next__(self) -> tuple[str, Outcome]:
        while self.pending:
            remaining = self.deadline - time.monotonic()
            try:
                item = self.queue.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                self.future.cancel()
                raise CallTimeout("*", "stream", "DEADLINE_EXCEEDED", "the stream outlived its deadline") from None
            if item is self._DONE:
                self.pending -= 1
                continue
            return item  # type: ignore[no-any-return]
        raise StopIteration

    def cancel(self) -> None:
        self.agent._hub.loop.call_soon_threadsafe(self.future.cancel)
