# Servicer of reporttest.ReportAgent for the tests; runs on the hosts (standard library, grpc, protobuf).
import os
import socket

import grpc

try:
    from . import report_pb2 as pb
    from . import report_pb2_grpc as pb_grpc
except ImportError:
    import report_pb2 as pb
    import report_pb2_grpc as pb_grpc


def AddServicer(server, controller=None):
    pb_grpc.add_ReportAgentServicer_to_server(ReportAgentServicer(controller), server)


class ReportAgentServicer(pb_grpc.ReportAgentServicer):
    def __init__(self, controller=None):
        self.controller = controller

    def Run(self, request, context):
        if self.controller is None:
            return pb.Reply(success=False, comment="no controller stub")
        acked = 0
        for step in range(1, request.count + 1):
            note = socket.gethostname()
            if step % 2:
                ack = self.controller.Report(pb.Progress(step=step, note=note), timeout=30)
            else:
                ack = self.controller.Report.future(pb.Progress(step=step, note=note), timeout=30).result()
            acked += int(ack.ok)
        return pb.Reply(success=True, acked=acked)

    def Probe(self, request, context):
        results = []
        channel = grpc.insecure_channel("127.0.0.1:{}".format(request.port))
        report = channel.unary_unary(
            "/reporttest.ReportAgentController/Report",
            request_serializer=pb.Progress.SerializeToString,
            response_deserializer=pb.Ack.FromString,
        )
        for metadata in ((), (("x-sshfleet-token", "not-the-secret"),)):
            try:
                report(pb.Progress(step=0), timeout=10, metadata=metadata)
                results.append("ANSWERED")
            except grpc.RpcError as exc:
                results.append(exc.code().name)
        channel.close()
        return pb.Reply(
            success=True, comment=",".join(results), grpc_dir=os.path.dirname(os.path.dirname(grpc.__file__))
        )
