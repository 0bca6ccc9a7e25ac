# Servicer of flowtest.FlowAgent for the tests; runs on the hosts (standard library, grpc, protobuf).
import itertools
import os
import socket
import threading

try:
    from . import flow_pb2 as pb
    from . import flow_pb2_grpc as pb_grpc
except ImportError:
    import flow_pb2 as pb
    import flow_pb2_grpc as pb_grpc

_counter = itertools.count()


def AddServicer(server):
    pb_grpc.add_FlowAgentServicer_to_server(FlowAgentServicer(), server)


class FlowAgentServicer(pb_grpc.FlowAgentServicer):
    def Work(self, request, context):
        path = "/tmp/{}-{}-{}".format(request.marker, os.getpid(), next(_counter))
        with open(path, "w"):
            pass
        ended = threading.Event()
        try:
            context.add_callback(ended.set)
            finished = not ended.wait(request.seconds)
        finally:
            os.unlink(path)
        return pb.Reply(success=finished, comment="worked" if finished else "call ended first")

    def Sum(self, request_iterator, context):
        total = count = 0
        for num in request_iterator:
            total += num.value
            count += 1
        return pb.Reply(success=True, total=total, count=count)

    def Echo(self, request_iterator, context):
        host = socket.gethostname()
        path = None
        try:
            for num in request_iterator:
                if path is None and num.marker:
                    path = "/tmp/{}-{}-{}".format(num.marker, os.getpid(), next(_counter))
                    open(path, "w").close()
                yield pb.Num(value=num.value * 10, host=host)
        finally:
            if path is not None:
                os.unlink(path)

    async def Nap(self, request, context):
        import asyncio

        path = "/tmp/{}-{}-{}".format(request.marker, os.getpid(), next(_counter))
        open(path, "w").close()
        try:
            await asyncio.sleep(request.seconds)
        finally:
            os.unlink(path)
        return pb.Reply(success=True, comment="napped on the event loop")

    async def Countdown(self, request, context):
        import asyncio

        for value in range(int(request.seconds), 0, -1):
            await asyncio.sleep(0)
            yield pb.Num(value=value, host=socket.gethostname())
