"""``Agent``: the base class of every generated agent (API layer).

``XAgent(fleet)`` starts the agent's servicer on every host of the Fleet over the host's shared connection
(bounded parallelism), forwards its port, and turns each method call into one parallel gRPC call to every host,
returning ``Responses``. ``XAgent(hosts)`` makes a Fleet of its own and closes it with the agent.
A host that fails at any step is an outcome in every later Responses, never an exception.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import difflib
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Union, cast

import grpc
import grpc.aio

from sshfleet import _payload
from sshfleet._bootstrap import start_servicer
from sshfleet._calls import CallFailed, CallStreams
from sshfleet._controller import ControllerService
from sshfleet._fleet import Fleet, HostsArg, host_logger
from sshfleet._futures import DEFERRED, RpcMethod, chain
from sshfleet._hub import Hub
from sshfleet._lifelines import HEARTBEAT, HostAgent, Lifelines
from sshfleet._messages import build_request
from sshfleet._options import Become, HostKeyPolicy, HostSpec, SshOptions, Timeouts, Transport, resolve_become
from sshfleet._responses import Outcome, Responses
from sshfleet._streams import SingleHostStream, StreamCall, StreamWiring
from sshfleet.errors import (
    AgentException,
    CallError,
    CallTimeout,
    ChannelError,
    HostError,
    UsageError,
)
from sshfleet.remote.runtime import TOKEN_KEY, TRACEBACK_KEY

log = logging.getLogger(__name__)

# How long past its deadline a fan-out may take before the hosts still silent are reported as timed out: the
# hosts' own deadlines end their calls first; this only bounds a stuck stream or a blocked loop.
CALL_MARGIN = 5.0
# Open files one agent holds per host on the controller (measured: ~9 with paramiko, ~4 with OpenSSH), with room.
FDS_PER_HOST = 12
_CHANNEL_OPTIONS = [
    # Each host has its own servicer: C-core's retry buffering is only per-call cost here.
    ("grpc.enable_retries", 0),
    # Advertise a 4 MiB stream window up front: with the 64 KiB default every 64 KiB streamed message waits for a
    # WINDOW_UPDATE round trip through the tunnel (bench/profile/FINDINGS.md).
    ("grpc.http2.lookahead_bytes", 4 << 20),
    ("grpc.enable_http_proxy", 0),
    ("grpc.default_authority", "localhost"),
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 256 << 20),
]


class Agent:
    """Base class of generated agents; subclasses set the class attributes below (see ``sshfleet generate``).

    ``XAgent(fleet)`` (or ``fleet.start(XAgent)``) runs on a Fleet's hosts over their shared connections;
    ``XAgent(hosts)`` makes its own Fleet from host strings / HostSpecs with the SSH options given here:
    ``forks`` (how many hosts connect/bootstrap at once, default 64), ``host_key_policy`` ("strict" or
    "accept-new"), ``ssh_config``/``known_hosts``/``identity_file``/``user``, ``transport`` ("paramiko", the
    default, or "openssh": the ssh binary, faster per call), ``keepalive``, or a whole ``ssh_options``.
    With a Fleet, those belong to the Fleet and are refused here.
    Agent options: ``timeouts`` (a Timeouts: its given fields override the fleet's bootstrap, call and close
    deadlines), ``python`` (interpreter on the hosts; default: the inventory's, else ``python3`` from the login
    PATH), ``become``/``become_user``/``become_password`` (start the servicer through sudo as that user, default
    root, as Ansible's become; default: the inventory's ``ansible_become*``), ``servicer``, ``log_level``,
    ``liveness``. ``close()`` is idempotent and also runs on ``with`` exit,
    when the fleet closes, and at interpreter exit.
    """

    _pb2: ClassVar[Any] = None
    _pb2_grpc: ClassVar[Any] = None
    _service_name: ClassVar[str] = ""
    _servicer_module: ClassVar[str] = ""
    _module_file: ClassVar[str] = ""
    _extra_files: ClassVar[Sequence[str]] = ()
    _exception: ClassVar[type[AgentException]] = AgentException
    _controller_service: ClassVar[str] = ""  # the proto's <Service>Controller, served here for the hosts

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give each unary RPC method of a generated (or hand-written) agent class ``.future()`` and ``.aio()``."""
        super().__init_subclass__(**kwargs)
        if cls._pb2 is None or not cls._service_name:
            return
        service = cls._pb2.DESCRIPTOR.services_by_name.get(cls._service_name.rsplit(".", 1)[-1])
        if service is None:
            return
        for method in service.methods:
            func = cls.__dict__.get(method.name)
            if callable(func) and not (method.client_streaming or method.server_streaming):
                setattr(cls, method.name, RpcMethod(func))

    def __init__(
        self,
        hosts: Union[Fleet, HostsArg],
        *,
        ssh_options: Optional[SshOptions] = None,
        timeouts: Optional[Timeouts] = None,
        forks: Optional[int] = None,
        python: Optional[str] = None,
        host_key_policy: Optional[HostKeyPolicy] = None,
        ssh_config: Optional[str] = None,
        known_hosts: Optional[str] = None,
        identity_file: Optional[str] = None,
        user: Optional[str] = None,
        servicer: Optional[str] = None,
        transport: Optional[Transport] = None,
        keepalive: Optional[float] = None,
        log_level: str = "INFO",
        liveness: float = 60.0,
        controller: Any = None,
        max_workers: int = 64,
        become: Optional[bool] = None,
        become_user: Optional[str] = None,
        become_password: Optional[str] = None,
    ) -> None:
        self._closed = True  # until started, close() has nothing to do
        self._controller: Optional[ControllerService] = None
        if self._pb2 is None or not self._service_name:
            raise UsageError(f"{type(self).__name__} is not a generated agent class (no proto attached)")
        Become(user=become_user or "root", password=become_password)  # a bad one is a caller mistake: raise now
        fleet_options: dict[str, Any] = {
            "ssh_options": ssh_options,
            "forks": forks,
            "host_key_policy": host_key_policy,
            "ssh_config": ssh_config,
            "known_hosts": known_hosts,
            "identity_file": identity_file,
            "user": user,
            "transport": transport,
            "keepalive": keepalive,
        }
        if isinstance(hosts, Fleet):
            refused = sorted(k for k, v in fleet_options.items() if v is not None)
            if refused:
                raise UsageError(
                    f"{', '.join(refused)}: connection settings belong to the Fleet, not to an agent on it "
                    "(give them to Fleet(...))"
                )
            self.fleet, self._owns_fleet = hosts, False
        else:
            self.fleet = Fleet(hosts, timeouts=timeouts, **fleet_options)
            self._owns_fleet = True
        self.options = self.fleet.options
        self.timeouts = timeouts.over(self.fleet.timeouts) if timeouts is not None else self.fleet.timeouts
        self._specs = list(self.fleet.specs)
        self._python = python
        self._become = (become, become_user, become_password)  # resolved per host at start, as the inventory may differ
        self._service = self._service_descriptor()
        self._servicer_path = Path(servicer) if servicer else None
        self._bundle = self._agent_bundle()
        self._liveness = float(liveness)
        self._log_level = log_level
        if not isinstance(max_workers, int) or max_workers < 1:
            raise UsageError(f"max_workers must be a positive integer, got {max_workers!r}")
        self._max_workers = max_workers
        controller_parts = self._controller_parts(controller)
        self._hub = Hub.get()
        self._sync_lock = threading.Lock()
        self._wiring = StreamWiring(
            hub=self._hub,
            states=lambda: list(self._hosts.values()),
            message_class=self._pb2_message,
            method_path=self._path,
            multicallable=self._multicallable,
            sync_channel=self._sync_channel,
            rpc_error=self._rpc_error,
        )
        self._hosts: dict[str, HostAgent] = {spec.name: HostAgent(spec.name) for spec in self._specs}
        try:
            self.fleet._attach(self)
        except BaseException:
            if self._owns_fleet:
                self.fleet.close()
            raise
        if controller_parts is not None:
            try:
                self._controller = ControllerService(controller, controller_parts, max_workers=max_workers)
            except BaseException:
                self.fleet._detach(self)
                if self._owns_fleet:
                    self.fleet.close()
                raise
        self._closed = False
        try:
            self.started = self._start()
        except BaseException:  # a caller mistake found at start (or Ctrl-C): leave nothing behind
            self.close()
            raise

    @classmethod
    def from_inventory(cls, path: str, pattern: str = "all", **options: Any) -> Agent:
        """Start the agent on the hosts of an inventory file that match ``pattern`` (Ansible patterns)."""
        from sshfleet.inventory import Inventory

        inventory = Inventory.load(path)
        agent_keys = {
            "timeouts",
            "python",
            "servicer",
            "log_level",
            "liveness",
            "controller",
            "max_workers",
            "become",
            "become_user",
            "become_password",
        }
        fleet = Fleet(
            inventory.select(pattern), inventory=inventory, **{k: v for k, v in options.items() if k not in agent_keys}
        )
        try:
            agent = cls(fleet, **{k: v for k, v in options.items() if k in agent_keys})
        except BaseException:
            fleet.close()
            raise
        agent._owns_fleet = True
        return agent

    # --- start ------------------------------------------------------------------------------------------

    def _service_descriptor(self) -> Any:
        short = self._service_name.rsplit(".", 1)[-1]
        try:
            return self._pb2.DESCRIPTOR.services_by_name[short]
        except KeyError:
            raise UsageError(f"{self._service_name} is not a service of {self._pb2.__name__}") from None

    def _controller_parts(self, controller: Any) -> Optional[Callable[[Any, grpc.Server], None]]:
        """Check ``controller=`` against the proto's ``<Service>Controller`` service; the function that adds it
        to a gRPC server, or None without a controller."""
        short = self._controller_service.rsplit(".", 1)[-1]
        if controller is None:
            return None
        if not short:
            raise UsageError(
                f"{type(self).__name__} takes no controller=: its .proto has no {self._service.name}Controller service"
            )
        base = getattr(self._pb2_grpc, f"{short}Servicer")
        if not isinstance(controller, base):
            raise UsageError(
                f"controller= must be an instance of a class derived from {self._pb2_grpc.__name__}.{short}Servicer, "
                f"not {type(controller).__name__}"
            )
        add: Callable[[Any, grpc.Server], None] = getattr(self._pb2_grpc, f"add_{short}Servicer_to_server")
        return add

    def _agent_bundle(self) -> _payload.Bundle:
        cls = type(self)
        key = (cls, self._servicer_path)
        cached = _bundle_cache.get(key)
        if cached is not None:
            return cached
        here = Path(cls._module_file).parent
        servicer = self._servicer_path or here / f"{cls._servicer_module}.py"
        if not servicer.is_file():
            raise UsageError(f"the servicer of {cls.__name__} was not found at {servicer}")
        files = {
            Path(cls._pb2.__file__).name: Path(cls._pb2.__file__),
            Path(cls._pb2_grpc.__file__).name: Path(cls._pb2_grpc.__file__),
            f"{cls._servicer_module}.py": servicer,
        }
        for extra in cls._extra_files:
            files[Path(extra).name] = here / extra
        bundle = _bundle_cache[key] = _payload.agent_bundle(files)
        return bundle

    def _start(self) -> Responses:
        """Connect and bootstrap every host in parallel (at most ``forks`` at once)."""
        self.fleet.reserve_fds(FDS_PER_HOST)
        if _payload.local_tag() not in _payload.known_deps():
            _payload.prepare_local_deps()
        self._deps_index = _payload.known_deps()  # read once for all hosts, not once per host
        outcomes = self.fleet.each(self._start_host, self._specs)
        return Responses("start", dict(zip((s.name for s in self._specs), outcomes)), error=self._exception)

    def _start_host(self, spec: HostSpec) -> Outcome:
        state = self._hosts[spec.name]
        hlog = host_logger(__name__, spec.name)
        try:
            conn = self.fleet.connection(spec.name)
            secret = secrets.token_urlsafe(32)
            config = {
                "secret": secret,
                "session": f"{int(time.time())}-{secrets.token_hex(6)}",
                "servicers": [self._servicer_module],
                "log_level": self._log_level,
                "liveness": self._liveness,
                "heartbeat": HEARTBEAT,
                "workers": self._max_workers,
            }
            if self._controller is not None:
                # The host's servicer calls the controller back through its own connection, with its own secret.
                state.reverse = conn.forward_remote(self._controller.path, timeout=self.timeouts.connect)
                state.controller_secret = self._controller.admit(spec.name)
                short = self._controller_service.rsplit(".", 1)[-1]
                config["controller"] = {
                    "port": state.reverse.port,
                    "secret": state.controller_secret,
                    "stub": f"{Path(self._pb2_grpc.__file__).stem}.{short}Stub",
                }
            python = self._python or spec.python or "python3"
            process = start_servicer(
                conn,
                python=python,
                agent=self._bundle,
                deps=self._deps_index,
                config=config,
                timeout=self.timeouts.bootstrap,
                become=resolve_become(spec, *self._become),
            )
            state.process = process
            state.metadata = ((TOKEN_KEY, secret),)
            state.forward = conn.forward_local(process.port, timeout=self.timeouts.connect)
            try:
                self._hub.run(_open_channel(state, state.forward.target, self.timeouts.connect))
            except asyncio.TimeoutError:
                raise ChannelError(
                    spec.name, "the servicer started but its port could not be reached through the SSH forward"
                ) from None
            _lifelines.watch(self._hub, state)
            hlog.info(
                "servicer %s started (pid %d, port %d, python %s, shipped %s) in %.2fs",
                self._service.name,
                process.pid,
                process.port,
                process.facts.get("python"),
                ",".join(process.stats.shipped) or "nothing",
                process.stats.seconds,
            )
            return {
                "pid": process.pid,
                "port": process.port,
                "python": process.facts.get("python"),
                "interpreter": process.facts.get("interpreter"),
                "shipped": list(process.stats.shipped),
                "round_trips": process.stats.round_trips,
                "seconds": process.stats.seconds,
            }
        except HostError as exc:
            hlog.warning("%s", exc.message)
            state.error = exc
            self._teardown_host(state)
            return exc
        except Exception as exc:  # a bug or an unforeseen library error must still stay this host's outcome
            hlog.exception("unexpected failure while starting")
            state.error = HostError(spec.name, f"unexpected failure while starting: {exc!r}")
            self._teardown_host(state)
            return state.error

    # --- calls ------------------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        return list(self._hosts)

    @property
    def closed(self) -> bool:
        return self._closed

    def _method(self, name: str) -> Any:
        method = self._service.methods_by_name.get(name)
        if method is None:
            names = list(self._service.methods_by_name)
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{type(self).__name__} has no method {name!r}{hint} (methods: {', '.join(names)})")
        return method

    def _path(self, method: Any) -> str:
        """The gRPC method path, ``/package.Service/Method``."""
        return f"/{self._service.full_name}/{method.name}"

    def _request(self, method: Any, fields: Mapping[str, object]) -> Any:
        message_class = self._pb2_message(method.input_type)
        present = {k: v for k, v in fields.items() if v is not None}
        return build_request(message_class, present, method=method.name)

    def _pb2_message(self, descriptor: Any) -> Any:
        from google.protobuf import message_factory

        return message_factory.GetMessageClass(descriptor)

    def _multicallable(self, state: HostAgent, method: Any) -> Any:
        mc = state.methods.get(method.name)
        if mc is None:
            assert state.channel is not None
            path = self._path(method)
            request_cls = self._pb2_message(method.input_type)
            reply_cls = self._pb2_message(method.output_type)
            kind = {
                (False, False): state.channel.unary_unary,
                (False, True): state.channel.unary_stream,
                (True, False): state.channel.stream_unary,
                (True, True): state.channel.stream_stream,
            }[(method.client_streaming, method.server_streaming)]
            mc = state.methods[method.name] = kind(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=reply_cls.FromString,
            )
        return mc

    def call(self, method: str, timeout: Optional[float] = None, **fields: Any) -> Responses:
        """Call a unary RPC by name on every host, its request's fields as keywords."""
        return self._call(method, fields, timeout=timeout)

    def invoke(
        self,
        method: str,
        fields: Mapping[str, object],
        *,
        timeout: Optional[float] = None,
        hosts: Optional[Iterable[str]] = None,
    ) -> Responses:
        """Call the unary RPC ``method`` on every host: the hook every generated method calls.

        ``fields`` are the request's fields (None values are left unset); ``timeout`` is the call's deadline in
        seconds (None: ``Timeouts.call``); ``hosts`` calls only those of the agent's hosts (default: all). Returns
        one outcome per host by the deadline; raises UsageError (before anything goes on the network) for an
        unknown method, field or host, or a streaming method.
        """
        mode = DEFERRED.get()  # the method body runs for .future() / .aio() / .as_completed()
        if mode == "future":
            return cast(Responses, self.invoke_future(method, fields, timeout=timeout, hosts=hosts))
        if mode == "as_completed":
            return cast(Responses, self.invoke_as_completed(method, fields, timeout=timeout, hosts=hosts))
        return self._call(method, fields, timeout=timeout, hosts=hosts)

    def invoke_future(
        self,
        method: str,
        fields: Mapping[str, object],
        *,
        timeout: Optional[float] = None,
        hosts: Optional[Iterable[str]] = None,
    ) -> Future[Responses]:
        """``invoke()`` without waiting: the call starts on every host now; returns a Future of its Responses.

        The future resolves by the deadline (a host that does not answer in time is a CallTimeout in the
        Responses); its callbacks run on sshfleet's callback threads, not the I/O thread; ``cancel()`` cancels
        every host's call. Caller mistakes (unknown method or field) raise here, before anything is sent.
        """
        call = self._prepare(method, fields, timeout, hosts)
        sink: dict[str, Outcome] = {}

        async def bounded() -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._fanout(call, sink), call.deadline + CALL_MARGIN)

        inner = asyncio.run_coroutine_threadsafe(bounded(), self._hub.loop)

        def cancel() -> None:
            self._hub.loop.call_soon_threadsafe(inner.cancel)

        return chain(inner, lambda _: self._settle(call, sink), cancel)

    def invoke_as_completed(
        self,
        method: str,
        fields: Mapping[str, object],
        *,
        timeout: Optional[float] = None,
        hosts: Optional[Iterable[str]] = None,
    ) -> Iterator[tuple[str, Outcome]]:
        """Call the unary RPC ``method`` on every host and yield ``(host, outcome)`` as each host answers, so a
        script is not held by its slowest host. Every host is yielded exactly once by the deadline (plus a small
        margin; one that has not answered then is a CallTimeout). Dropping the iterator cancels the calls left."""
        call = self._prepare(method, fields, timeout, hosts)
        sink: dict[str, Outcome] = {}
        arrived: queue.SimpleQueue[tuple[str, Outcome]] = queue.SimpleQueue()
        inner = asyncio.run_coroutine_threadsafe(
            self._fanout(call, sink, lambda h, o: arrived.put((h, o))), self._hub.loop
        )
        return _AsCompleted(self, call, sink, arrived, inner)

    async def invoke_async(
        self,
        method: str,
        fields: Mapping[str, object],
        *,
        timeout: Optional[float] = None,
        hosts: Optional[Iterable[str]] = None,
    ) -> Responses:
        """``invoke()`` for the caller's asyncio loop (no thread per call); cancelling the task cancels the calls."""
        future = self.invoke_future(method, fields, timeout=timeout, hosts=hosts)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def invoke_stream(
        self,
        method: str,
        request: Union[Mapping[str, object], Iterable[Any], None] = None,
        *,
        timeout: Optional[float] = None,
        hosts: Optional[Iterable[str]] = None,
    ) -> Iterator[tuple[str, Outcome]]:
        """Call the streaming RPC ``method`` on every host (or ``hosts``): the hook generated streaming methods call.

        ``request`` is the request's fields (server streaming) or an iterable of messages or field dicts sent to
        every host (client streaming). Yields ``(host, reply)`` as replies arrive, ``(host, HostError)`` once for
        a host that fails; ``close()`` on the iterator cancels every host's call.
        """
        if DEFERRED.get():
            raise UsageError(f"{method} is a streaming RPC: iterate it instead of .future() / .aio()")
        return self._call_stream(method, request, timeout=timeout, hosts=hosts)

    def _prepare(
        self, name: str, fields: Mapping[str, object], timeout: Optional[float], hosts: Optional[Iterable[str]]
    ) -> _Call:
        """Check a unary call before anything is sent."""
        self._check_open()
        method = self._method(name)
        if method.client_streaming or method.server_streaming:
            raise UsageError(f"{name} is a streaming RPC: use {name}() from the generated class or call_stream()")
        request = self._request(method, fields)
        deadline = float(timeout) if timeout is not None else self.timeouts.call
        if deadline <= 0:
            raise UsageError(f"timeout must be positive, got {timeout!r}")
        return _Call(name, method, request, deadline, self._targets(hosts))

    def _targets(self, hosts: Optional[Iterable[str]]) -> list[HostAgent]:
        """The states of ``hosts`` (default: every host), in the agent's host order."""
        if hosts is None:
            return list(self._hosts.values())
        wanted = {hosts} if isinstance(hosts, str) else set(hosts)
        unknown = sorted(wanted - set(self._hosts))
        if unknown:
            raise UsageError(f"not hosts of this {type(self).__name__}: {', '.join(unknown)}")
        return [state for host, state in self._hosts.items() if host in wanted]

    def _call(
        self,
        name: str,
        fields: Mapping[str, object],
        *,
        timeout: Optional[float] = None,
        hosts: Optional[Iterable[str]] = None,
    ) -> Responses:
        call = self._prepare(name, fields, timeout, hosts)
        sink: dict[str, Outcome] = {}
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self._hub.run(self._fanout(call, sink), timeout=call.deadline + CALL_MARGIN)
        return self._settle(call, sink)

    async def _fanout(
        self, call: _Call, sink: dict[str, Outcome], on_outcome: Optional[Callable[[str, Outcome], None]] = None
    ) -> None:
        """Call ``method`` on every host; each host's outcome goes into ``sink`` (and to ``on_outcome``) as it
        comes, so a caller that stops waiting still has every answer that arrived."""
        # The hot path of every fan-out: the request is serialized once for all hosts, and each host's call
        # is one frame each way on one of its idle call streams (sshfleet/_calls.py).
        method, deadline = call.method, call.deadline
        path = self._path(method).encode()
        payload = call.request.SerializeToString()
        reply_cls = self._pb2_message(method.output_type)
        live = []
        reviving: list[tuple[HostAgent, concurrent.futures.Future[Any]]] = []
        for state in call.targets:
            if state.error is None and state.calls is not None:
                live.append((state, state.calls))
                continue
            revival = self._revive(state) if state.lost or state.reviving is not None else None
            if revival is not None:
                reviving.append((state, revival))
            else:
                sink[state.host] = state.error or HostError(state.host, "no servicer")
                if on_outcome is not None:
                    on_outcome(state.host, sink[state.host])

        async def one(state: HostAgent, calls: CallStreams, budget: float) -> None:
            try:
                result: Any = await calls.call(path, payload, budget)
            except Exception as exc:
                result = exc
            outcome = self._outcome(state, method.name, reply_cls, result)
            sink[state.host] = outcome
            if on_outcome is not None:
                on_outcome(state.host, outcome)

        async def revived(state: HostAgent, revival: concurrent.futures.Future[Any]) -> None:
            # A host that lost its servicer is restarted (in a thread) and then called, within this deadline.
            started = time.monotonic()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(revival)), deadline)
            left = deadline - (time.monotonic() - started)
            if state.error is None and state.calls is not None and left > 0:
                await one(state, state.calls, left)
                return
            sink[state.host] = state.error or CallTimeout(
                state.host, method.name, "DEADLINE_EXCEEDED", "the servicer was still being restarted at the deadline"
            )
            if on_outcome is not None:
                on_outcome(state.host, sink[state.host])

        if len(live) == 1 and not reviving:  # no task needed for one host
            await one(*live[0], deadline)
        elif on_outcome is None and not reviving:
            # The hot path: every host's call goes out now as one frame on its call stream, and each is a plain
            # future (no task, no coroutine per host), read once they are all done (or, when the caller stops
            # waiting, those that are; cancelling the others resets their streams, which ends them on the hosts).
            replies = [calls.start(path, payload, deadline) for _, calls in live]
            try:
                await asyncio.gather(*replies, return_exceptions=True)
            finally:
                for (state, _), reply in zip(live, replies):
                    if reply.done() and not reply.cancelled():
                        result = reply.exception() or reply.result()
                        sink[state.host] = self._outcome(state, method.name, reply_cls, result)
        elif live or reviving:
            await asyncio.gather(
                *(one(state, calls, deadline) for state, calls in live),
                *(revived(state, revival) for state, revival in reviving),
            )

    def _outcome(self, state: HostAgent, method: str, reply_cls: Any, result: Any) -> Outcome:
        if isinstance(result, (bytes, memoryview)):
            return reply_cls.FromString(result)
        if isinstance(result, CallFailed):
            return self._call_error(state, method, result.code, result.details, result.remote_traceback)
        if isinstance(result, grpc.aio.AioRpcError):
            return self._rpc_error(state, method, result)
        log.error("%s: unexpected failure of %s: %r", state.host, method, result)
        return HostError(state.host, f"unexpected failure of {method}: {result!r}")

    def _settle(self, call: _Call, sink: dict[str, Outcome]) -> Responses:
        """The Responses of a fan-out, in host order; a host with no outcome in ``sink`` (its call did not end
        by the deadline plus the margin: a stuck stream or a blocked loop) is a CallTimeout, never lost."""
        outcomes: dict[str, Outcome] = {}
        for state in call.targets:
            outcome = sink.get(state.host)
            if outcome is None:
                outcome = CallTimeout(
                    state.host,
                    call.name,
                    "DEADLINE_EXCEEDED",
                    f"no answer within the {call.deadline:g}s deadline; call abandoned",
                )
            outcomes[state.host] = outcome
        return Responses(call.name, outcomes, error=self._exception)

    def _rpc_error(self, state: HostAgent, method: str, exc: Union[grpc.aio.AioRpcError, grpc.Call]) -> HostError:
        tb = ""
        for key, value in exc.trailing_metadata() or ():
            if key == TRACEBACK_KEY:
                tb = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return self._call_error(state, method, exc.code(), exc.details() or "", tb)

    def _call_error(
        self, state: HostAgent, method: str, code: Optional[grpc.StatusCode], details: str, tb: str
    ) -> HostError:
        if state.error is not None:  # the servicer's lifeline broke meanwhile: that is the real reason
            return state.error
        cls = CallTimeout if code == grpc.StatusCode.DEADLINE_EXCEEDED else CallError
        return cls(state.host, method, code.name if code else "UNKNOWN", details, tb)

    def call_stream(
        self,
        name: str,
        request: Union[Mapping[str, object], Iterable[Any], None] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Iterator[tuple[str, Outcome]]:
        """Call a streaming RPC on every host; yields ``(host, reply)`` as replies arrive, from all hosts.

        A host that fails yields ``(host, HostError)`` once. For client-streaming and bidirectional RPCs,
        ``request`` is an iterable of messages (or field dicts) sent to every host, or one stream per host: a dict
        of host -> iterable, or a function of the host returning its iterable. Breaking out of the loop (once the
        iterator is dropped), ``close()``, Ctrl-C or the deadline cancel every host's call.
        """
        return self._call_stream(name, request, timeout=timeout)

    def _call_stream(
        self,
        name: str,
        request: Union[Mapping[str, object], Iterable[Any], None],
        *,
        timeout: Optional[float] = None,
        hosts: Optional[Iterable[str]] = None,
    ) -> Iterator[tuple[str, Outcome]]:
        self._check_open()
        targets = self._targets(hosts)
        wiring = self._wiring if hosts is None else dataclasses.replace(self._wiring, states=lambda: targets)
        method = self._method(name)
        deadline = float(timeout) if timeout is not None else self.timeouts.call
        per_host: Optional[Callable[[str], Optional[Iterable[Any]]]] = None
        if method.client_streaming:
            source = request if request is not None else ()
            requests: Optional[Iterable[Any]] = None
            if isinstance(source, Mapping):
                unknown = [h for h in source if h not in {state.host for state in targets}]
                if unknown:
                    raise UsageError(
                        f"{name} takes a stream of requests: an iterable of messages or dicts sent to every host, "
                        f"or a dict of host -> iterable; {', '.join(map(repr, unknown[:3]))} "
                        f"{'is not a host' if len(unknown) == 1 else 'are not hosts'} of this agent"
                    )
                per_host = cast(Mapping[str, Iterable[Any]], source).get
            elif callable(source):
                per_host = source
            else:
                requests = source
            single = None
        else:
            requests = None
            if request is not None and not isinstance(request, Mapping):
                raise UsageError(f"{name} takes one request: pass its fields as a dict")
            single = self._request(method, request or {})
            if len(targets) == 1 and targets[0].error is None and method.server_streaming:
                return SingleHostStream(wiring, targets[0], method, single, deadline)
        return StreamCall(wiring, method, single, requests, deadline, per_host)

    def _sync_channel(self, state: HostAgent) -> grpc.Channel:
        """A second, synchronous channel to the host's servicer, for SingleHostStream; made on first use."""
        with self._sync_lock:
            if state.sync_channel is None:
                assert state.forward is not None
                target = state.forward.target
                options = [*_CHANNEL_OPTIONS, ("grpc.experimental.single_threaded_unary_stream", 1)]
                state.sync_channel = grpc.insecure_channel(target, options=options)
            return state.sync_channel

    # --- files ----------------------------------------------------------------------------------------

    def fetch(
        self, remote: str, local_dir: Union[str, os.PathLike[str]], *, timeout: Optional[float] = None
    ) -> Responses:
        """Bring home what the servicers wrote into their session directories: ``remote`` (relative to each
        host's session directory, globs allowed) into ``local_dir/HOST/``. Call it before ``close()``, which
        removes the session directories. One outcome per host (a Transfer, or why not), as ``Fleet.get``."""
        self._check_open()
        from sshfleet import _files

        dirs: dict[str, Union[str, HostError]] = {}
        for host, state in self._hosts.items():
            if state.process is not None:
                dirs[host] = state.process.session_dir
            else:
                dirs[host] = state.error or HostError(host, "no servicer")
        return _files.fetch(self.fleet, dirs, remote, local_dir, timeout=timeout)

    # --- reconnecting ---------------------------------------------------------------------------------

    def reconnect(self, hosts: Optional[Iterable[str]] = None) -> Responses:
        """Restart the servicer on those of ``hosts`` (default: all) that are in error (lost it, or never got
        one), reconnecting first where the connection is gone; healthy hosts are not touched. Returns each
        restarted host's start outcome.

        A host that lost its servicer is also revived by the next call on its own (see ``_revive``)."""
        self._check_open()
        asked = list(self._hosts) if hosts is None else ([hosts] if isinstance(hosts, str) else list(hosts))
        unknown = [h for h in asked if h not in self._hosts]
        if unknown:
            raise UsageError(f"not hosts of this agent: {', '.join(unknown)}")
        names = [h for h in asked if self._hosts[h].error is not None]
        outcomes = self.fleet.each(self._restart_host, [self.fleet.spec(h) for h in names])
        return Responses("reconnect", dict(zip(names, outcomes)), error=self._exception)

    def _revive(self, state: HostAgent) -> Optional[concurrent.futures.Future[Any]]:
        """The restart of a host that lost its servicer: the one in progress, a new one, or None while the
        backoff after failed attempts (1, 2, 4 ... 30 s) runs. Called on the hub loop; the restart runs in a
        thread, so calls to other hosts never wait for it."""
        if state.reviving is not None:
            return state.reviving
        if self._closed or time.monotonic() < state.revive_after:
            return None
        spec = self.fleet.spec(state.host)
        state.reviving = _revivers.submit(self._restart_host, spec)

        def done(future: concurrent.futures.Future[Any]) -> None:
            state.reviving = None
            if state.error is None:
                state.revive_failures = 0
            else:
                state.revive_failures += 1
                state.revive_after = time.monotonic() + min(30.0, 2.0 ** (state.revive_failures - 1))

        state.reviving.add_done_callback(done)
        return state.reviving

    def _restart_host(self, spec: HostSpec) -> Outcome:
        state = self._hosts[spec.name]
        with state.restart_lock:
            if self._closed:
                return HostError(spec.name, "the agent was closed")
            hlog = host_logger(__name__, spec.name)
            hlog.info("restarting the servicer (%s)", state.error.message if state.error else "on request")
            self._teardown_host(state)
            state.lost = False
            state.methods.clear()
            state.error = None
            outcome = self._start_host(spec)
            if self._closed:  # closed while starting: do not leave this servicer behind
                self._teardown_host(state)
            return outcome

    # --- lifetime ---------------------------------------------------------------------------------------

    def logs(self, host: str, max_bytes: int = 1 << 20) -> str:
        """The servicer's log file on ``host`` (its last ``max_bytes``), for when a servicer misbehaves."""
        state = self._hosts.get(host)
        if state is None:
            raise UsageError(f"{host!r} is not one of this agent's hosts")
        if state.process is None:
            raise UsageError(f"{host} has no running servicer: {state.error}")
        conn = self.fleet.connection(host)
        chan = conn.exec(f"tail -c {int(max_bytes)} -- '{state.process.log_path}'", timeout=self.timeouts.call)
        chan.settimeout(self.timeouts.call)
        data = bytearray()
        with contextlib.suppress(socket.timeout):
            while chunk := chan.recv(65536):
                data += chunk
        chan.close()
        return data.decode("utf-8", "replace")

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{type(self).__name__} is closed")

    def _teardown_host(self, state: HostAgent, stop_deadline: Optional[float] = None) -> None:
        _lifelines.forget(state)
        if state.calls is not None or state.sync_channel is not None or state.channel is not None:
            with contextlib.suppress(Exception):
                self._hub.run(_close_channels([state]), timeout=2)
        if state.forward is not None:
            state.forward.close()
            state.forward = None
        if state.reverse is not None:
            state.reverse.close()
            state.reverse = None
        if state.controller_secret and self._controller is not None:
            self._controller.revoke(state.controller_secret)
            state.controller_secret = ""
        if state.process is not None:
            chan = state.process.channel
            with contextlib.suppress(Exception):
                chan.settimeout(1.0)
                chan.sendall(b"STOP\n")
                chan.shutdown_write()
            deadline = stop_deadline or time.monotonic() + self.timeouts.close
            while not chan.exit_status_ready() and time.monotonic() < deadline and not chan.closed:
                time.sleep(0.01)
            chan.close()
            state.process = None

    def close(self) -> None:
        """Stop every servicer (it removes its session directory) and close its forwards; then close the
        agent's own Fleet, if it made one (a Fleet it was given stays open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_hosts()
        finally:
            if self._controller is not None:
                self._controller.close()
            self.fleet._detach(self)
            if self._owns_fleet:
                self.fleet.close()

    def _stop_hosts(self) -> None:
        for state in self._hosts.values():  # a restart in progress finishes (and tears itself down) first
            revival = state.reviving
            if revival is not None:
                with contextlib.suppress(Exception):
                    revival.result(timeout=self.timeouts.close + self.timeouts.connect)
        deadline = time.monotonic() + self.timeouts.close
        states = list(self._hosts.values())
        for state in states:
            _lifelines.forget(state)  # their channels closing now is expected, not a failure
        # Close the gRPC side first, all hosts at once: a servicer that gets STOP while call streams are still
        # open lets server.stop() wait for them (up to its grace period) until the controller closes them.
        with contextlib.suppress(Exception):
            self._hub.run(_close_channels(states), timeout=2)
        for state in states:  # tell every servicer at once, then wait for them together
            if state.process is not None:
                with contextlib.suppress(Exception):
                    state.process.channel.settimeout(1.0)
                    state.process.channel.sendall(b"STOP\n")
        self.fleet.each(lambda spec: self._teardown_host(self._hosts[spec.name], deadline), self._specs)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Garbage collection may run on the hub thread, where close() would wait on the loop it blocks:
        # leave that case to the fleet's atexit handler, which closes its agents.
        if not getattr(self, "_closed", True) and not self._hub.in_loop():
            with contextlib.suppress(Exception):
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._hosts)} hosts"
        return f"<{type(self).__name__} {state}>"


async def _close_channels(states: list[HostAgent]) -> None:
    """Close the call streams and gRPC channels of ``states`` (on the hub loop, all at once)."""
    channels = []
    for state in states:
        if state.calls is not None:
            state.calls.close()
            state.calls = None
        if state.sync_channel is not None:
            state.sync_channel.close()
            state.sync_channel = None
        if state.channel is not None:
            channels.append(state.channel)
            state.channel = None
    await asyncio.gather(*(channel.close() for channel in channels), return_exceptions=True)


async def _open_channel(state: HostAgent, target: str, timeout: float) -> None:
    """Give ``state`` its gRPC channel and call streams (grpc.aio objects live on the hub loop), connect
    HTTP/2 through the forward and open a call stream now, while other hosts still bootstrap, rather than in
    the first call (~0.1 s of the first call at 32 hosts before). Raises asyncio.TimeoutError."""
    state.channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
    state.calls = CallStreams(state.channel, state.metadata, target=target)
    await asyncio.wait_for(state.channel.channel_ready(), timeout)
    state.calls.prime()


_lifelines = Lifelines()
_revivers = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="sshfleet-revive")
_bundle_cache: dict[tuple[type, Optional[Path]], _payload.Bundle] = {}


@dataclass(frozen=True)
class _Call:
    """One unary fan-out, checked and ready to send."""

    name: str
    method: Any  # its descriptor
    request: Any
    deadline: float
    targets: list[HostAgent]  # the hosts called, in the agent's host order


class _AsCompleted(Iterator[tuple[str, Outcome]]):
    """What ``Agent.invoke_as_completed`` returns: each host's outcome as it arrives, every host once."""

    def __init__(
        self,
        agent: Agent,
        call: _Call,
        sink: dict[str, Outcome],
        arrived: queue.SimpleQueue[tuple[str, Outcome]],
        inner: concurrent.futures.Future[None],
    ) -> None:
        self._agent = agent
        self._call = call
        self._sink = sink
        self._arrived = arrived
        self._inner = inner
        self._until = time.monotonic() + call.deadline + CALL_MARGIN
        self._order = [state.host for state in call.targets]
        self._left = set(self._order)

    def __next__(self) -> tuple[str, Outcome]:
        if not self._left:
            raise StopIteration
        try:
            host, outcome = self._arrived.get(timeout=max(0.0, self._until - time.monotonic()))
        except queue.Empty:  # the hosts still silent past the margin: report them, lose none
            self.close()
            host = min(self._left, key=self._order.index)
            outcome = self._agent._settle(self._call, self._sink)[host]
        except BaseException:  # Ctrl-C while waiting: the hosts' calls end with us
            self.close()
            raise
        self._left.discard(host)
        return host, outcome

    def close(self) -> None:
        if not self._inner.done():
            self._agent._hub.loop.call_soon_threadsafe(self._inner.cancel)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
