"""gRPC alone, no SSH: latency and CPU of one trivial unary call for each server/client flavour.

    python -m bench.profile.grpc_micro [--calls 3000]

The server runs in a child process (as the servicer does on a host) on 127.0.0.1; the client is this process.
Server flavours: ``sync`` (grpc.server + ThreadPoolExecutor, what sshfleet/remote/runtime.py runs),
``sync+interceptor`` (the same with a pass-through interceptor, like the runtime's AuthInterceptor),
``aio`` (grpc.aio.server, async handler), ``aio-sync-handler`` (grpc.aio.server running the plain sync
handler through its migration thread pool). Client flavours: ``sync`` (grpc.insecure_channel) and ``aio``
(grpc.aio on an event loop thread, called from the main thread the way sshfleet's Hub.run does).
CPU is counted for the client process and the server process separately, per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from bench import _proc

SERVER = r"""
import asyncio, sys
from concurrent import futures
import grpc
sys.path.insert(0, sys.argv[2])
from agents import sysinfo_pb2 as pb, sysinfo_pb2_grpc as pbg

class S(pbg.SysinfoAgentServicer):
    def Uname(self, request, context):
        return pb.UnameReply(success=True, sysname="Linux")

class A(pbg.SysinfoAgentServicer):
    async def Uname(self, request, context):
        return pb.UnameReply(success=True, sysname="Linux")

class Pass(grpc.ServerInterceptor):
    def intercept_service(self, continuation, details):
        dict(details.invocation_metadata or ())
        return continuation(details)

flavour = sys.argv[1]
if flavour.startswith("sync"):
    inter = (Pass(),) if flavour == "sync+interceptor" else ()
    server = grpc.server(futures.ThreadPoolExecutor(16), interceptors=inter)
    pbg.add_SysinfoAgentServicer_to_server(S(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
else:
    async def main():
        if flavour == "aio":
            server = grpc.aio.server()
            pbg.add_SysinfoAgentServicer_to_server(A(), server)
        else:
            server = grpc.aio.server(migration_thread_pool=futures.ThreadPoolExecutor(16))
            pbg.add_SysinfoAgentServicer_to_server(S(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    asyncio.run(main())
"""


def measure(server_flavour: str, client_flavour: str, calls: int) -> dict[str, float]:
    import grpc

    from agents import sysinfo_pb2 as pb
    from agents import sysinfo_pb2_grpc as pbg

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, server_flavour, repo], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        target = f"127.0.0.1:{port}"
        request = pb.UnameArgs()
        times = []
        if client_flavour == "sync":
            channel = grpc.insecure_channel(target)
            stub = pbg.SysinfoAgentStub(channel)
            for _ in range(100):
                stub.Uname(request)
            c0, s0, w0 = time.process_time(), _proc.cpu_seconds(proc.pid), time.perf_counter()
            for _ in range(calls):
                t = time.perf_counter()
                stub.Uname(request)
                times.append(time.perf_counter() - t)
            c1, s1, w1 = time.process_time(), _proc.cpu_seconds(proc.pid), time.perf_counter()
            channel.close()
        else:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, daemon=True)
            thread.start()

            def run(coro: Any) -> Any:
                return asyncio.run_coroutine_threadsafe(coro, loop).result()

            async def make() -> Any:
                return grpc.aio.insecure_channel(target)

            channel = run(make())
            stub = pbg.SysinfoAgentStub(channel)

            async def one() -> Any:
                return await stub.Uname(request)

            for _ in range(100):
                run(one())
            c0, s0, w0 = time.process_time(), _proc.cpu_seconds(proc.pid), time.perf_counter()
            for _ in range(calls):
                t = time.perf_counter()
                run(one())
                times.append(time.perf_counter() - t)
            c1, s1, w1 = time.process_time(), _proc.cpu_seconds(proc.pid), time.perf_counter()
            run(channel.close())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
        return {
            "median_us": statistics.median(times) * 1e6,
            "client_cpu_us": (c1 - c0) / calls * 1e6,
            "server_cpu_us": (s1 - s0) / calls * 1e6,
            "wall_us": (w1 - w0) / calls * 1e6,
        }
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(10)


def fanout(client_flavour: str, channels: int, rounds: int) -> dict[str, float]:
    """Client CPU of a fan-out round: ``channels`` connections to one sync server, one call on each."""
    import grpc

    from agents import sysinfo_pb2 as pb
    from agents import sysinfo_pb2_grpc as pbg

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, "sync", repo], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        target = f"127.0.0.1:{int(proc.stdout.readline())}"
        request = pb.UnameArgs()
        # Distinct channel args keep gRPC from sharing one subchannel (one connection) between the channels.
        opts = [[("grpc.sshfleet_bench_index", i)] for i in range(channels)]
        times = []
        if client_flavour == "sync-futures":
            stubs = [pbg.SysinfoAgentStub(grpc.insecure_channel(target, options=o)) for o in opts]

            def round_() -> None:
                futures = [s.Uname.future(request) for s in stubs]
                for f in futures:
                    f.result()

        else:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()

            async def make() -> Any:
                return [pbg.SysinfoAgentStub(grpc.aio.insecure_channel(target, options=o)) for o in opts]

            stubs = asyncio.run_coroutine_threadsafe(make(), loop).result()

            async def gather() -> Any:
                return await asyncio.gather(*(s.Uname(request) for s in stubs))

            def round_() -> None:
                asyncio.run_coroutine_threadsafe(gather(), loop).result()

        for _ in range(20):
            round_()
        c0, s0 = time.process_time(), _proc.cpu_seconds(proc.pid)
        for _ in range(rounds):
            t = time.perf_counter()
            round_()
            times.append(time.perf_counter() - t)
        c1, s1 = time.process_time(), _proc.cpu_seconds(proc.pid)
        calls = rounds * channels
        return {
            "median_ms": statistics.median(times) * 1e3,
            "client_cpu_us": (c1 - c0) / calls * 1e6,
            "server_cpu_us": (s1 - s0) / calls * 1e6,
        }
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(10)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile.grpc_micro", description=__doc__)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--fanout", type=int, default=32, help="channels in the fan-out comparison (0: skip it)")
    args = p.parse_args(argv)
    print(f"{'server':<18} {'client':<6} {'median µs':>10} {'client CPU µs':>14} {'server CPU µs':>14}")
    for server in ("sync", "sync+interceptor", "aio", "aio-sync-handler"):
        for client in ("sync", "aio"):
            r = measure(server, client, args.calls)
            print(
                f"{server:<18} {client:<6} {r['median_us']:10.0f} {r['client_cpu_us']:14.0f} {r['server_cpu_us']:14.0f}"
            )
    if args.fanout:
        print(f"\nfan-out over {args.fanout} channels to one sync server, per call:")
        for client in ("aio-gather", "sync-futures"):
            r = fanout(client, args.fanout, max(50, args.calls // args.fanout))
            print(
                f"  {client:<13} round median {r['median_ms']:6.2f} ms  client CPU {r['client_cpu_us']:5.0f} µs  "
                f"server CPU {r['server_cpu_us']:5.0f} µs"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
