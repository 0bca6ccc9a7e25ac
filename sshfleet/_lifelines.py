"""Per-host agent state, and the lifelines: each servicer's bootstrap channel, watched on the hub loop.

A servicer lives as long as its channel (see remote/runtime.py). The controller drains it (heartbeats, stderr),
sends a heartbeat every few seconds, and notices its EOF: from then on, that host's calls report why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import grpc
import grpc.aio

from sshfleet import _ssh
from sshfleet._bootstrap import ServicerProcess
from sshfleet._calls import CallStreams
from sshfleet._hub import Hub
from sshfleet.errors import ChannelError, HostError

log = logging.getLogger("sshfleet._agent")
HEARTBEAT = 5.0


@dataclass(eq=False)  # compared by identity: a field-wise __eq__ over channels and calls means nothing
class HostAgent:
    """This agent's state on one host: the servicer, its forward and gRPC channel, or why there is none."""

    host: str
    process: Optional[ServicerProcess] = None
    forward: Optional[_ssh.Forward] = None  # the servicer's port, forwarded to a local socket
    reverse: Optional[_ssh.RemoteForward] = None  # the controller's service, forwarded to a port on the host
    controller_secret: str = ""  # what this host's servicer calls the controller with
    channel: Optional[grpc.aio.Channel] = None
    calls: Optional[CallStreams] = None
    sync_channel: Optional[grpc.Channel] = None  # made on first use: single-host server streams (_streams.py)
    metadata: tuple[tuple[str, str], ...] = ()
    error: Optional[HostError] = None
    methods: dict[str, Any] = field(default_factory=dict)
    # The servicer was up and its lifeline broke (servicer gone or connection lost): the next call revives it.
    lost: bool = False
    reviving: Optional[concurrent.futures.Future[Any]] = None
    revive_after: float = 0.0  # monotonic time before which no new revive is tried (backoff after failures)
    revive_failures: int = 0
    restart_lock: threading.Lock = field(default_factory=threading.Lock)


class Lifelines:
    """Watches every servicer's bootstrap channel on the hub loop: drains it, sends heartbeats, notices EOF."""

    def __init__(self) -> None:
        self.states: dict[int, HostAgent] = {}
        self.task: Optional[asyncio.Task[None]] = None

    def watch(self, hub: Hub, state: HostAgent) -> None:
        def register() -> None:
            assert state.process is not None
            chan = state.process.channel
            chan.settimeout(0.0)
            self.states[id(state)] = state
            hub.loop.add_reader(chan.fileno(), self._drain, hub, state)
            stderr_fileno = getattr(chan, "stderr_fileno", None)  # pipe channels have a separate stderr
            if stderr_fileno is not None:
                hub.loop.add_reader(stderr_fileno(), self._drain, hub, state)
            if self.task is None:
                self.task = hub.loop.create_task(self._beat())

        hub.call(register)

    def forget(self, state: HostAgent) -> None:
        process = state.process
        if self.states.pop(id(state), None) is not None and process is not None:
            hub = Hub.get()
            with contextlib.suppress(Exception):
                hub.call(lambda: self._unwatch(hub, process.channel), timeout=2)

    @staticmethod
    def _unwatch(hub: Hub, chan: Any) -> None:
        hub.loop.remove_reader(chan.fileno())
        stderr_fileno = getattr(chan, "stderr_fileno", None)
        if stderr_fileno is not None:
            hub.loop.remove_reader(stderr_fileno())

    def _drain(self, hub: Hub, state: HostAgent) -> None:
        process = state.process
        if process is None:
            return
        chan = process.channel
        eof = False
        with contextlib.suppress(socket.timeout):
            while chan.recv_stderr_ready():
                process.remember_stderr(chan.recv_stderr(65536))
            while True:
                data = chan.recv(65536)
                if not data:
                    eof = True
                    break
        if eof or chan.closed:
            self._unwatch(hub, chan)
            self.states.pop(id(state), None)
            if state.error is None:
                tail = bytes(process.stderr_tail[-2000:]).decode("utf-8", "replace").strip()
                state.error = ChannelError(
                    state.host,
                    "the servicer's SSH channel closed (servicer exited or connection lost)"
                    + (f": {tail}" if tail else ""),
                )
                state.lost = True
                log.warning("[host=%s] %s", state.host, state.error.message)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            for state in list(self.states.values()):
                if state.process is not None:
                    with contextlib.suppress(Exception):
                        state.process.channel.send(b"\n")
