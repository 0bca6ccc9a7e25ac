"""Streaming calls: the replies of every host's stream, merged into one iterator (API layer)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import grpc
import grpc.aio

from sshfleet._hub import Hub
from sshfleet._lifelines import HostAgent
from sshfleet._messages import build_request
from sshfleet._responses import Outcome
from sshfleet.errors import CallTimeout, HostError


@dataclass(frozen=True)
class StreamWiring:
    """What a streaming call needs from its agent, and nothing else: the agent hands these over when it starts
    a stream, so the stream classes never reach into the agent's own members."""

    hub: Hub
    states: Callable[[], list[HostAgent]]  # the agent's hosts, in order
    message_class: Callable[[Any], Any]  # protobuf message class of a descriptor
    method_path: Callable[[Any], str]  # /package.Service/Method
    multicallable: Callable[[HostAgent, Any], Any]  # the grpc.aio multicallable of a method on a host
    sync_channel: Callable[[HostAgent], grpc.Channel]
    rpc_error: Callable[[HostAgent, str, Union[grpc.aio.AioRpcError, grpc.Call]], HostError]


class StreamCall(Iterator[tuple[str, Outcome]]):
    """What ``Agent.call_stream()`` returns: the streams of all hosts merged into one iterator of
    ``(host, reply)``, a failed host yielding ``(host, HostError)`` once. The pumping runs on the hub loop
    (``_Merge``); this handle is what the caller holds, so dropping it (a ``break`` out of a ``for`` loop)
    cancels the calls: the running pump references only the ``_Merge``, never the handle.

    ``cancel()`` (also ``close()``, leaving a ``with`` block, dropping the iterator, Ctrl-C while waiting, or the
    deadline) ends every host's call at once: the servicers see the call cancelled, and the request readers
    stop reading. See ``_Merge`` for the requests of client-streaming and bidirectional methods.
    """

    def __init__(
        self,
        wiring: StreamWiring,
        method: Any,
        request: Any,
        requests: Optional[Iterable[Any]],
        deadline: float,
        per_host: Optional[Callable[[str], Optional[Iterable[Any]]]] = None,
    ) -> None:
        self._merge = _Merge(wiring, method, request, requests, deadline, per_host)

    def __next__(self) -> tuple[str, Outcome]:
        return self._merge.next()

    def cancel(self) -> None:
        """End every host's call now (idempotent)."""
        self._merge.cancel()

    close = cancel

    def __enter__(self) -> StreamCall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        merge = getattr(self, "_merge", None)
        if merge is not None:
            with contextlib.suppress(Exception):
                merge.cancel()


class _Merge:
    """The pump of a StreamCall, on the hub loop.

    Requests of a client-streaming or bidirectional method are either one iterable broadcast to every host or,
    with ``per_host``, a function giving each host its own iterable (None: that host gets an empty stream).
    A request that cannot be built (a bad dict) ends the streams and is raised to the consumer as UsageError.

    Replies reach the consumer in batches: the loop appends to ``_items`` and notifies only a consumer that
    sleeps; the consumer takes everything queued with one lock acquisition.
    A ``queue.Queue`` (lock + notify + a GIL hand-off per reply) cost ~12 % of the loop's time at 64 KiB
    replies. Like the Queue before it, the buffer is unbounded: a slow consumer does not slow the hosts.
    """

    _DONE = object()

    def __init__(
        self,
        wiring: StreamWiring,
        method: Any,
        request: Any,
        requests: Optional[Iterable[Any]],
        deadline: float,
        per_host: Optional[Callable[[str], Optional[Iterable[Any]]]] = None,
    ) -> None:
        self.wiring = wiring
        self._per_host = per_host
        self._request_error: Optional[BaseException] = None
        self._finished = False
        self._stopped = threading.Event()  # cancelled: the request readers stop reading
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._items: collections.deque[Any] = collections.deque()  # filled on the loop, under _lock
        self._batch: collections.deque[Any] = collections.deque()  # the consumer's own, no lock
        self._waiting = False  # the consumer sleeps on _ready (under _lock)
        states = wiring.states()
        self.pending = len(states)
        self.request_cls = wiring.message_class(method.input_type)
        self.future = asyncio.run_coroutine_threadsafe(
            self._run(method, request, requests, deadline, states), wiring.hub.loop
        )
        if self._stopped.is_set():  # a request reader failed before the future was set
            wiring.hub.loop.call_soon_threadsafe(self.future.cancel)
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

        def read_requests(source: Iterable[Any], targets: list[asyncio.Queue[Any]]) -> None:
            try:
                for item in source:
                    if self._stopped.is_set():  # cancelled: stop reading the caller's iterable
                        break
                    msg = (
                        item
                        if hasattr(item, "DESCRIPTOR")
                        else build_request(self.request_cls, item, method=method.name)
                    )
                    for feed in targets:
                        loop.call_soon_threadsafe(feed.put_nowait, msg)
            except BaseException as exc:  # a caller mistake: end the streams, tell the consumer
                self._request_error = exc
                self.cancel()
            finally:
                for feed in targets:
                    loop.call_soon_threadsafe(feed.put_nowait, self._DONE)

        if self._per_host is not None:
            feeds = [asyncio.Queue() for _ in states]
            for state, feed in zip(states, feeds):
                source = self._per_host(state.host) or ()
                threading.Thread(
                    target=read_requests, args=(source, [feed]), name="sshfleet-requests", daemon=True
                ).start()
        elif requests is not None:
            feeds = [asyncio.Queue() for _ in states]
            threading.Thread(
                target=read_requests, args=(requests, feeds), name="sshfleet-requests", daemon=True
            ).start()

        async def feed_iter(feed: asyncio.Queue[Any]) -> Any:
            while (item := await feed.get()) is not self._DONE:
                yield item

        put = self._put

        async def one(index: int, state: HostAgent) -> None:
            host = state.host
            try:
                if state.error is not None:
                    put((host, state.error))
                    return
                mc = self.wiring.multicallable(state, method)
                arg = feed_iter(feeds[index]) if feeds else request
                call = mc(arg, timeout=deadline, metadata=state.metadata)
                if method.server_streaming:
                    async for reply in call:
                        put((host, reply))
                else:
                    put((host, await call))
            except grpc.aio.AioRpcError as exc:
                put((host, self.wiring.rpc_error(state, method.name, exc)))
            finally:
                put(self._DONE)

        await asyncio.gather(*(one(i, s) for i, s in enumerate(states)))

    def _put(self, item: Any) -> None:
        """Queue one item for the consumer (loop thread); notify only a consumer that sleeps."""
        with self._lock:
            self._items.append(item)
            if self._waiting:
                self._waiting = False
                self._ready.notify()

    def _take(self) -> bool:
        """Move everything queued into the consumer's batch, waiting until the deadline; False on timeout."""
        with self._lock:
            while not self._items:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._waiting = True
                self._ready.wait(remaining)
                self._waiting = False
            self._items, self._batch = self._batch, self._items
        return True

    def next(self) -> tuple[str, Outcome]:
        batch = self._batch
        try:
            while self.pending:
                if not batch:
                    if not self._take():
                        self.cancel()
                        raise CallTimeout("*", "stream", "DEADLINE_EXCEEDED", "the stream outlived its deadline")
                    batch = self._batch
                item = batch.popleft()
                if item is self._DONE:
                    self.pending -= 1
                    continue
                return item  # type: ignore[no-any-return]
        except BaseException:  # Ctrl-C while waiting: the hosts' calls end with us
            self.cancel()
            raise
        self._finished = True
        if self._request_error is not None:
            error, self._request_error = self._request_error, None
            raise error
        raise StopIteration

    def cancel(self) -> None:
        self._stopped.set()
        future = getattr(self, "future", None)  # a request reader may cancel before the caller's thread set it
        if future is not None and not future.done():
            self.wiring.hub.loop.call_soon_threadsafe(future.cancel)


class SingleHostStream(Iterator[tuple[str, Outcome]]):
    """A server stream from an agent's only host, read on the caller's own thread from a sync gRPC channel.

    With one host there is nothing to merge, so the replies need not cross the hub loop at all: with
    ``grpc.experimental.single_threaded_unary_stream`` each message is read by the thread that iterates, with
    no poller thread, loop wake-up or hand-off queue per message (~20 % less controller CPU per GB, see
    bench/profile/FINDINGS.md). Same interface and outcomes as StreamCall.
    """

    def __init__(self, wiring: StreamWiring, state: HostAgent, method: Any, request: Any, deadline: float) -> None:
        self.wiring = wiring
        self.state = state
        self.method = method
        self._cancelled = False
        self._done = False
        channel = wiring.sync_channel(state)
        reply_cls = wiring.message_class(method.output_type)
        multicallable = channel.unary_stream(
            wiring.method_path(method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply_cls.FromString,
        )
        self._call = multicallable(request, timeout=deadline, metadata=state.metadata)

    def __next__(self) -> tuple[str, Outcome]:
        if self._done:
            raise StopIteration
        try:
            return self.state.host, next(self._call)
        except StopIteration:
            self._done = True
            raise
        except grpc.RpcError as exc:
            self._done = True
            if self._cancelled:
                raise StopIteration from None
            call: grpc.Call = exc  # type: ignore[assignment]  # a sync call's error is the call itself
            return self.state.host, self.wiring.rpc_error(self.state, self.method.name, call)
        except BaseException:  # KeyboardInterrupt while waiting: the host's call ends with us
            self._done = True
            self._call.cancel()
            raise

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()
