"""The call-stream frames and the host-side dispatcher (pure logic: no network, no server)."""

from __future__ import annotations

import threading

import grpc
from hypothesis import given
from hypothesis import strategies as st

from sshfleet import _calls
from sshfleet.remote import runtime

CODES = list(grpc.StatusCode)


@given(
    call_id=st.integers(0, 2**32 - 1),
    timeout=st.floats(0, 1e6),
    method=st.text(min_size=1, max_size=200),
    payload=st.binary(max_size=2000),
)
def test_request_frame_round_trips_through_the_runtime(call_id, timeout, method, payload):
    frame = _calls.encode_request(call_id, timeout, method.encode(), payload)
    got_id, got_timeout, n = runtime.REQUEST_HEAD.unpack_from(frame)
    start = runtime.REQUEST_HEAD.size
    assert (got_id, got_timeout) == (call_id, timeout)
    assert frame[start : start + n].decode() == method
    assert frame[start + n :] == payload


@given(
    call_id=st.integers(0, 2**32 - 1),
    code=st.sampled_from(CODES),
    details=st.text(max_size=300),
    tb=st.text(max_size=300),
    payload=st.binary(max_size=2000),
)
def test_reply_frame_round_trips_to_the_controller(call_id, code, details, tb, payload):
    frame = runtime._reply(call_id, code, details, tb.encode(), payload)
    assert _calls.decode_reply(frame) == (call_id, code, details, tb, payload)


class StreamContext:
    """Stands in for grpc's context of the Calls stream: what CallContext delegates to it."""

    def __init__(self):
        self.callbacks = []
        self.active = True

    def add_callback(self, callback):
        self.callbacks.append(callback)
        return True

    def invocation_metadata(self):
        return (("x-sshfleet-token", "t"),)

    def is_active(self):
        return self.active

    def peer(self):
        return "ipv4:127.0.0.1:1"


def _servicer_handlers(seen):
    def echo(request, context):
        seen.append(context)
        return b"echo:" + request

    def fail(request, context):
        raise ValueError("bad " + request.decode())

    def abort(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def set_code(request, context):
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("later")
        return b"ignored"

    def wait(request, context):
        ended = threading.Event()
        assert context.add_callback(ended.set)
        seen.append(context)
        return b"ended" if ended.wait(5) else b"timed out"

    def forgot_return(request, context):
        pass

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn)
        for name, fn in (
            ("Echo", echo),
            ("Fail", fail),
            ("Abort", abort),
            ("SetCode", set_code),
            ("Wait", wait),
            ("None", forgot_return),
        )
    }
    handlers["Stream"] = grpc.unary_stream_rpc_method_handler(lambda request, context: iter(()))
    return grpc.method_handlers_generic_handler("t.T", handlers)


def _run(calls, frames, stream=None):
    stream = stream or StreamContext()
    return [_calls.decode_reply(reply) for reply in calls.handler(iter(frames), stream)]


def _frame(call_id, method, payload=b"", timeout=0.0):
    return _calls.encode_request(call_id, timeout, method.encode(), payload)


def test_dispatch_runs_the_servicers_handler_and_reports_each_outcome():
    seen = []
    calls = runtime.Calls()
    calls.add_generic_rpc_handlers((_servicer_handlers(seen),))
    replies = _run(
        calls,
        [
            _frame(1, "/t.T/Echo", b"hi", timeout=30),
            _frame(2, "/t.T/Fail", b"input"),
            _frame(3, "/t.T/Abort"),
            _frame(4, "/t.T/SetCode"),
            _frame(5, "/t.T/Nope"),
            _frame(6, "/t.T/Stream"),
            _frame(7, "/t.T/None"),
        ],
    )
    assert replies[0] == (1, grpc.StatusCode.OK, "", "", b"echo:hi")
    assert replies[1][:3] == (2, grpc.StatusCode.UNKNOWN, "ValueError: bad input")
    assert "raise ValueError" in replies[1][3] and "in fail" in replies[1][3]
    assert "_dispatch" not in replies[1][3]  # our own frame is not the user's business
    assert replies[2] == (3, grpc.StatusCode.NOT_FOUND, "no such thing", "", b"")
    assert replies[3] == (4, grpc.StatusCode.UNIMPLEMENTED, "later", "", b"")
    assert replies[4][:2] == (5, grpc.StatusCode.UNIMPLEMENTED) and "/t.T/Nope" in replies[4][2]
    assert replies[5][:2] == (6, grpc.StatusCode.UNIMPLEMENTED)  # streaming methods are not carried
    assert replies[6] == (7, grpc.StatusCode.INTERNAL, "/t.T/None returned None instead of a reply", "", b"")
    context = seen[0]
    assert 29 < context.time_remaining() <= 30
    assert context.invocation_metadata() == (("x-sshfleet-token", "t"),)
    assert context.peer() == "ipv4:127.0.0.1:1"  # the rest is the stream's
    assert not context.is_active() and not context.add_callback(lambda: None)  # the call has ended


def test_registered_method_handlers_are_found_too():
    calls = runtime.Calls()
    calls.add_registered_method_handlers(
        "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request * 2)}
    )
    assert _run(calls, [_frame(9, "/t.T/Echo", b"ab")]) == [(9, grpc.StatusCode.OK, "", "", b"abab")]


def test_a_cancelled_stream_ends_the_call_running_on_it():
    """The controller cancels a call's stream when its deadline passes: the servicer's callbacks must fire."""
    seen = []
    calls = runtime.Calls()
    calls.add_generic_rpc_handlers((_servicer_handlers(seen),))
    stream = StreamContext()
    replies = []
    worker = threading.Thread(target=lambda: replies.extend(_run(calls, [_frame(1, "/t.T/Wait")], stream)))
    worker.start()
    for _ in range(1000):  # at most 10 s
        if seen or not worker.is_alive():
            break
        worker.join(0.01)
    assert seen, "the servicer method never ran"
    assert seen[0].is_active()
    stream.active = False
    for callback in stream.callbacks:  # what grpc does when the stream is cancelled
        callback()
    worker.join(10)
    assert replies == [(1, grpc.StatusCode.OK, "", "", b"ended")]
    assert not seen[0].is_active()
