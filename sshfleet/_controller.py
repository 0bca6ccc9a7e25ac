"""The controller's side of host -> controller calls (the Vortex seed's two directions), for one agent.

An agent whose .proto has a second service ``<Service>Controller`` is given ``controller=`` an instance of the
generated ``<Service>ControllerServicer``. Here it is served by a gRPC server on a Unix socket in a private 0700
directory of the controller; each host reaches that socket through a remote forward of its own SSH connection
(``ssh -R 127.0.0.1:0:SOCKET``), and its servicer gets a ready stub that carries the host's own controller secret.

Only the controller's own servicers may call: any user on a host can connect to the forwarded port, so every call
must present one of the secrets handed to the servicers on their stdin (never argv or environment), else it is
refused UNAUTHENTICATED with no other answer. The secret also tells which host called (``calling_host(context)``).
Handlers run on this server's own thread pool: never on the hub's I/O thread nor on the thread of a fan-out, so a
servicer that calls back while the controller waits for it cannot deadlock either.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import grpc

from sshfleet.errors import UsageError
from sshfleet.remote.runtime import TOKEN_KEY

log = logging.getLogger(__name__)
CONTROLLER_PREFIX = "sshfleet-ctl-"

# secret -> host, for every controller service of this process (calling_host() reads it)
_callers: dict[str, str] = {}
_callers_lock = threading.Lock()


def calling_host(context: grpc.ServicerContext) -> str:
    """The host whose servicer made this call to the controller's service: use it in a controller handler.

    Raises UsageError outside a host -> controller call."""
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_KEY:
            with _callers_lock:
                host = _callers.get(value if isinstance(value, str) else value.decode("ascii", "replace"))
            if host is not None:
                return host
    raise UsageError("calling_host() works only inside a handler of an agent's controller service")


def _refuse(request: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong session token")


class _Admission(grpc.ServerInterceptor):  # type: ignore[misc]
    """Serve only calls that carry a secret this service handed out."""

    def __init__(self, secrets_in_use: dict[str, str]) -> None:
        self._secrets = secrets_in_use
        self._refuse = grpc.unary_unary_rpc_method_handler(_refuse)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        for key, value in details.invocation_metadata or ():
            if key == TOKEN_KEY and value in self._secrets:
                return continuation(details)
        log.warning("refused a call to %s without a valid session token", details.method)
        return self._refuse


class ControllerService:
    """One agent's controller service; ``close()`` stops it (calls in flight end CANCELLED on the hosts) and
    removes its directory. Idempotent."""

    def __init__(self, servicer: Any, add_to_server: Callable[[Any, grpc.Server], None], max_workers: int) -> None:
        self._secrets: dict[str, str] = {}  # secret -> host, for this service only
        self.dir = tempfile.mkdtemp(prefix=f"{CONTROLLER_PREFIX}{os.getpid()}-")  # 0700
        self.path = os.path.join(self.dir, "controller.sock")
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sshfleet-controller"),
            interceptors=(_Admission(self._secrets),),
            options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)],
        )
        add_to_server(servicer, self.server)
        self.server.add_insecure_port(f"unix:{self.path}")
        self.server.start()
        self.closed = False

    def admit(self, host: str) -> str:
        """A new secret for ``host``'s servicer to call with."""
        secret = secrets.token_urlsafe(32)
        self._secrets[secret] = host
        with _callers_lock:
            _callers[secret] = host
        return secret

    def revoke(self, secret: str) -> None:
        self._secrets.pop(secret, None)
        with _callers_lock:
            _callers.pop(secret, None)

    def close(self, grace: Optional[float] = 1.0) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.stop(grace).wait(5)
        for secret in list(self._secrets):
            self.revoke(secret)
        shutil.rmtree(self.dir, ignore_errors=True)
