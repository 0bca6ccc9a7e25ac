"""Non-blocking calls (API layer): ``agent.Method.future(...)`` and ``await agent.Method.aio(...)``.

Every unary method of an agent class is wrapped in an ``RpcMethod`` descriptor, so ``agent.Method`` is still a
plain call (it blocks and returns ``Responses``) and also has:

* ``.future(**fields, timeout=)``: a ``concurrent.futures.Future`` of the Responses, grpc's own spelling. The
  fan-out runs on the hub loop like any call; the future is resolved, and its ``add_done_callback`` callbacks
  run, on a small pool of callback threads, never on the hub's I/O thread (a slow callback must not stall every
  host's I/O). ``future.cancel()`` cancels every host's call, which cancels the servicers' work.
* ``.as_completed(**fields, timeout=)``: an iterator of ``(host, outcome)`` in the order the hosts answer.
* ``.aio(**fields, timeout=)``: a coroutine for the caller's own asyncio loop, as a grpc.aio stub call is awaited.
  It awaits the same fan-out without a thread per call; cancelling the awaiting task cancels the remote calls.

How: the wrapped method (generated code, or a hand-written one such as ``ExecAgent.Run``) builds its request and
calls ``Agent.invoke()``; while a ``.future()`` is being made, ``invoke()`` starts the fan-out and hands back
its future instead of waiting (a context variable says so), so one method body serves all three forms.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Generic, Optional, TypeVar

from sshfleet.errors import UsageError

R = TypeVar("R")
# While a method body runs for .future()/.aio() ("future") or .as_completed() ("as_completed"), invoke() returns
# a Future, or an iterator of (host, outcome), instead of blocking.
DEFERRED: contextvars.ContextVar[str] = contextvars.ContextVar("sshfleet_deferred", default="")
_callbacks: Optional[ThreadPoolExecutor] = None


def callback_pool() -> ThreadPoolExecutor:
    """The threads that resolve futures (and so run their callbacks), made on first use."""
    global _callbacks
    if _callbacks is None:
        _callbacks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sshfleet-callback")
    return _callbacks


def chain(inner: Future[Any], make: Callable[[Any], R], on_cancel: Callable[[], None]) -> Future[R]:
    """A Future of ``make(inner's result)``, resolved off the thread that finishes ``inner``; cancelling it
    calls ``on_cancel`` (which cancels the work behind ``inner``)."""
    outer: Future[R] = Future()

    def settle(done: Future[Any]) -> None:
        if outer.cancelled():
            return
        try:
            result = make(done.result())
        except BaseException as exc:
            if not outer.done():
                outer.set_exception(exc)
            return
        if not outer.done():
            outer.set_result(result)

    def finished(done: Future[Any]) -> None:
        callback_pool().submit(settle, done)

    def cancelled(fut: Future[R]) -> None:
        if fut.cancelled():
            on_cancel()

    outer.add_done_callback(cancelled)
    inner.add_done_callback(finished)
    return outer


class BoundRpc(Generic[R]):
    """``agent.Method``: call it to block, or use ``.future()`` / ``.aio()``."""

    def __init__(self, agent: Any, func: Callable[..., R], name: str) -> None:
        self._agent = agent
        self._func = func
        self.__name__ = name
        self.__doc__ = func.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self._func(self._agent, *args, **kwargs)

    def _started(self, mode: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        token = DEFERRED.set(mode)
        try:
            return self._func(self._agent, *args, **kwargs)
        finally:
            DEFERRED.reset(token)

    def future(self, *args: Any, **kwargs: Any) -> Future[R]:
        """Start the call on every host and return at once: a Future of its Responses."""
        started = self._started("future", args, kwargs)
        if not isinstance(started, Future):
            raise UsageError(f"{self.__name__} does not go through Agent.invoke(): it has no .future()")
        return started

    async def aio(self, *args: Any, **kwargs: Any) -> R:
        """Await the call on every host from the caller's event loop; cancelling the task cancels the calls."""
        future = self.future(*args, **kwargs)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def as_completed(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Start the call on every host and yield ``(host, outcome)`` as each host answers (every host once)."""
        started = self._started("as_completed", args, kwargs)
        if isinstance(started, Future) or not hasattr(started, "__next__"):
            raise UsageError(f"{self.__name__} does not go through Agent.invoke(): it has no .as_completed()")
        return started  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<bound RPC {type(self._agent).__name__}.{self.__name__}>"


class RpcMethod(Generic[R]):
    """Wraps one of an agent class's unary RPC methods (see the module docstring)."""

    def __init__(self, func: Callable[..., R]) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __get__(self, agent: Any, owner: Optional[type] = None) -> Any:
        if agent is None:
            return self
        return BoundRpc(agent, self.func, self.func.__name__)
