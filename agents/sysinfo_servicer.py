# Servicer of sysinfo.SysinfoAgent (proto/sysinfo.proto): started from the `sshfleet generate` template
# and implemented by hand; `sshfleet generate` keeps it unless --force. It runs on the hosts, so it may use
# only the standard library, grpc and protobuf, on Python >= 3.6.
"""Facts about the host (uname, Python, pid) plus sleep, failure and streaming probes."""

import logging
import os
import platform
import threading

import grpc

try:  # package import on the controller, top-level import on the host
    from . import sysinfo_pb2 as pb
    from . import sysinfo_pb2_grpc as pb_grpc
except ImportError:
    import sysinfo_pb2 as pb
    import sysinfo_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Count() repeats one random block instead of calling os.urandom per chunk: the bytes must not compress away
# (ssh may compress) but generating them must not dominate a throughput benchmark.
_BLOCK_SIZE = 1 << 16


def AddServicer(server):
    pb_grpc.add_SysinfoAgentServicer_to_server(SysinfoAgentServicer(), server)


class SysinfoAgentServicer(pb_grpc.SysinfoAgentServicer):
    """Implements sysinfo.SysinfoAgent on the host; one instance serves every call."""

    def __init__(self):
        super().__init__()
        self._block = os.urandom(_BLOCK_SIZE)
        log.debug("SysinfoAgentServicer created.")

    def Uname(self, request, context):
        """Identify the host: uname fields, the Python version that runs the servicer, and its pid."""
        log.debug("Invoking: Uname(...)")
        uname = os.uname()
        return pb.UnameReply(
            success=True,
            sysname=uname.sysname,
            nodename=uname.nodename,
            release=uname.release,
            machine=uname.machine,
            python_version=platform.python_version(),
            pid=os.getpid(),
        )

    def Sleep(self, request, context):
        """Sleep on the host, then answer; returns early if the call is cancelled or its deadline passes."""
        seconds = request.seconds
        log.debug("Invoking: Sleep(seconds=%r)", seconds)
        if not seconds >= 0:  # also catches NaN
            return pb.Response(success=False, comment=f"seconds must be >= 0, got {seconds!r}")
        # The callback fires when the RPC ends for any reason (cancelled, deadline, client gone), so a
        # long Sleep does not hold a worker thread after nobody waits for it any more.
        ended = threading.Event()
        if not context.add_callback(ended.set):
            return pb.Response(success=False, comment="call already ended")
        if ended.wait(seconds):
            return pb.Response(success=False, comment="call ended before the sleep did")
        return pb.Response(success=True, comment=f"slept {seconds:g} s")

    def Fail(self, request, context):
        """Raise RuntimeError(message) in the servicer, so the caller sees a remote traceback."""
        log.debug("Invoking: Fail(message=%r)", request.message)
        raise RuntimeError(request.message or "Fail() was called")

    def Count(self, request, context):
        """Stream n chunks of size bytes each, numbered from 0."""
        n, size = request.n, request.size
        log.debug("Invoking: Count(n=%d, size=%d)", n, size)
        if n < 0 or size < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"n and size must be >= 0, got {n} and {size}")
        data = (self._block * (size // _BLOCK_SIZE + 1))[:size]
        for index in range(n):
            if not context.is_active():
                return
            yield pb.Chunk(index=index, data=data)
