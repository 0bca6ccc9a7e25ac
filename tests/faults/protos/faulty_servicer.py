# Servicer of faultytest.FaultyAgent for the fault tests; runs on the hosts (standard library, grpc, protobuf).
import logging
import os
import socket
import subprocess
import time

try:
    from . import faulty_pb2 as pb
    from . import faulty_pb2_grpc as pb_grpc
except ImportError:
    import faulty_pb2 as pb
    import faulty_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


def AddServicer(server):
    pb_grpc.add_FaultyAgentServicer_to_server(FaultyAgentServicer(), server)


class FaultyAgentServicer(pb_grpc.FaultyAgentServicer):
    def _pids(self, comment=""):
        return pb.Reply(pid=os.getpid(), ppid=os.getppid(), comment=comment)

    def Hang(self, request, context):
        if request.text and request.text != socket.gethostname():
            return self._pids("not this host")
        time.sleep(request.seconds)  # deaf to the deadline on purpose: a wedged worker
        return self._pids("hung")

    def Raise(self, request, context):
        raise RuntimeError(request.text)

    def Crash(self, request, context):
        os._exit(3)

    def Flood(self, request, context):
        line = "x" * request.size
        for _ in range(request.count):
            log.warning("%s", line)
        return self._pids("flooded")

    def Spawn(self, request, context):
        process = subprocess.Popen(
            ["/bin/sh", "-c", request.text],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process.wait()  # the shell itself; what it put in the background stays
        return self._pids("spawned")

    def Pids(self, request, context):
        return self._pids()
