"""build_request() checks a caller's fields before anything goes on the wire; message_to_dict() is --json."""

from __future__ import annotations

import base64
import importlib.util
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from sshfleet._codegen import build
from sshfleet._messages import build_request, message_to_dict
from sshfleet.errors import UsageError

KITCHEN = Path(__file__).parent / "protos" / "kitchen.proto"


def _load_pb2(directory: Path) -> Any:
    generated = build(KITCHEN)
    path = directory / "kitchen_pb2.py"
    path.write_text(generated.modules["kitchen_pb2.py"])
    name = "_test_messages_kitchen_pb2"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


@pytest.fixture(scope="module")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _load_pb2(tmp_path_factory.mktemp("kitchen"))


def order(pb2: Any, **fields: object) -> Any:
    return build_request(pb2.Order, fields, method="Cook")


# --- valid values --------------------------------------------------------------------------------------


def test_scalars_are_set(pb2: Any) -> None:
    msg = order(pb2, d=1.5, f=2, i32=-7, i64=2**40, u32=7, u64=2**63, s32=-1, flag=True, name="x", blob=b"\0")
    assert (msg.d, msg.f, msg.i32, msg.i64, msg.u64, msg.flag, msg.name, msg.blob) == (
        1.5,
        2.0,
        -7,
        2**40,
        2**63,
        True,
        "x",
        b"\0",
    )


def test_none_means_unset_at_any_depth(pb2: Any) -> None:
    msg = order(pb2, i32=None, maybe=None, inner={"label": None, "weight": 3})
    assert msg.i32 == 0
    assert not msg.HasField("maybe")
    assert msg.inner.weight == 3


def test_nested_message_as_dict_or_message(pb2: Any) -> None:
    from_dict = order(pb2, inner={"label": "a", "color": "RED"})
    from_msg = order(pb2, inner=pb2.Order.Inner(label="a", color=pb2.RED))
    assert from_dict == from_msg
    assert from_dict.inner.color == pb2.RED


def test_empty_nested_message_is_present(pb2: Any) -> None:
    assert order(pb2, inner={}).HasField("inner")
    assert order(pb2, inner=pb2.Order.Inner()).HasField("inner")


def test_repeated_map_enum_and_keyword_fields(pb2: Any) -> None:
    msg = order(
        pb2,
        tags=("a", "b"),
        items=[{"label": "x"}, pb2.Order.Inner(weight=2)],
        counts={"a": 1},
        by_id={5: {"label": "five"}},
        colors=["GREEN", 1],
        **{"from": "me"},
    )
    assert list(msg.tags) == ["a", "b"]
    assert [i.label for i in msg.items] == ["x", ""]
    assert msg.items[1].weight == 2
    assert dict(msg.counts) == {"a": 1}
    assert msg.by_id[5].label == "five"
    assert list(msg.colors) == [pb2.GREEN, pb2.RED]
    assert getattr(msg, "from") == "me"


def test_well_known_type_field(pb2: Any) -> None:
    assert order(pb2, when={"seconds": 5}).when.seconds == 5
    assert order(pb2, when=timestamp_pb2.Timestamp(nanos=3)).when.nanos == 3


def test_open_enum_keeps_unknown_numbers(pb2: Any) -> None:
    assert order(pb2, color=42).color == 42


def test_int_accepted_for_double(pb2: Any) -> None:
    assert order(pb2, d=3).d == 3.0


# --- caller mistakes -----------------------------------------------------------------------------------


def test_unknown_field_names_method_fields_and_suggestion(pb2: Any) -> None:
    with pytest.raises(UsageError) as info:
        build_request(pb2.TimedArgs, {"timout": 1}, method="Timed")
    assert str(info.value) == "Timed() got an unknown field 'timout'; fields: timeout (did you mean 'timeout'?)"


def test_unknown_nested_field_names_its_path(pb2: Any) -> None:
    with pytest.raises(UsageError, match=r"Cook\(\) got an unknown field 'lable' in 'inner'.*did you mean 'label'"):
        order(pb2, inner={"lable": "x"})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"i32": True}, r"field 'i32' expects int32, got bool True"),
        ({"i32": "3"}, r"field 'i32' expects int32, got str '3'"),
        ({"i32": 1.0}, r"field 'i32' expects int32, got float 1.0"),
        ({"d": "1.5"}, r"field 'd' expects double, got str"),
        ({"d": False}, r"field 'd' expects double, got bool"),
        ({"flag": 1}, r"field 'flag' expects bool, got int 1"),
        ({"name": b"x"}, r"field 'name' expects string, got bytes b'x'; decode bytes first"),
        ({"blob": "x"}, r"field 'blob' expects bytes, got str 'x'; encode str first"),
        ({"i32": 2**31}, r"field 'i32' is int32: 2147483648 is out of range \[-2147483648, 2147483647\]"),
        ({"u32": -1}, r"field 'u32' is uint32: -1 is out of range"),
        ({"u64": 2**64}, r"field 'u64' is uint64: .* out of range"),
        ({"i64": -(2**63) - 1}, r"field 'i64' is int64: .* out of range"),
        ({"f": 1e39}, r"field 'f' is float: .* out of range for 32 bits"),
        ({"d": 10**400}, r"field 'd' is double: an integer of 1329 bits is out of range"),
        ({"i64": 10**5000}, r"field 'i64' is int64: an integer of 16610 bits is out of range"),
        ({"tags": "abc"}, r"field 'tags' is repeated string: expects a list or tuple, got str"),
        ({"tags": ["a", 1]}, r"field 'tags\[1\]' expects string, got int 1"),
        ({"items": [{"weight": "x"}]}, r"field 'items\[0\].weight' expects int32, got str"),
        ({"counts": [("a", 1)]}, r"field 'counts' is a map: expects a dict, got list"),
        ({"counts": {1: 1}}, r"field 'counts key 1' expects string, got int 1"),
        ({"counts": {"a": "1"}}, r"field 'counts\['a'\]' expects int32, got str"),
        (
            {"by_id": {1: 5}},
            r"field 'by_id\[1\]' expects kitchen.Order.Inner \(a dict or message\), got int 5",
        ),
        ({"inner": "x"}, r"field 'inner' expects kitchen.Order.Inner \(a dict or message\), got str"),
        (
            {"inner": timestamp_pb2.Timestamp()},
            r"expects kitchen.Order.Inner .*got message google.protobuf.Timestamp",
        ),
        ({"color": "BLUE"}, r"field 'color' has no enum value 'BLUE'; values: COLOR_UNSPECIFIED, RED, GREEN"),
        ({"color": "REDD"}, r"did you mean 'RED'\?"),
        ({"color": 1.0}, r"field 'color' expects enum kitchen.Color \(int or one of .*\), got float"),
        ({"color": True}, r"field 'color' expects enum kitchen.Color"),
        ({"color": 2**40}, r"field 'color' is enum kitchen.Color: .* out of int32 range"),
        ({"a": "x", "b": 1}, r"fields 'a' and 'b' are both in oneof 'choice'; set at most one"),
    ],
)
def test_wrong_values_are_usage_errors(pb2: Any, fields: dict[str, object], expected: str) -> None:
    with pytest.raises(UsageError, match=r"^Cook\(\) .*" + expected):
        order(pb2, **fields)


def test_usage_error_is_a_value_error(pb2: Any) -> None:
    with pytest.raises(ValueError):
        order(pb2, i32="x")


# --- message_to_dict ---------------------------------------------------------------------------------


def test_message_to_dict_shows_defaults_with_proto_names(pb2: Any) -> None:
    result = message_to_dict(pb2.Plate())
    assert result == {"success": False, "comment": ""}
    assert message_to_dict(build_request(pb2.Order, {"from": "x"}, method="Cook"))["from"] == "x"


# --- property: random valid dicts round-trip ----------------------------------------------------------

COLORS = ("COLOR_UNSPECIFIED", "RED", "GREEN")
int32s = st.integers(-(2**31), 2**31 - 1)
enum_values = st.one_of(st.sampled_from(COLORS), st.integers(0, 2))
inner_dicts = st.fixed_dictionaries({}, optional={"label": st.text(max_size=5), "weight": int32s, "color": enum_values})
order_dicts = st.fixed_dictionaries(
    {},
    optional={
        "d": st.floats(allow_nan=False, allow_infinity=False),
        # Bounded: protobuf's own ParseDict rejects FLT_MAX once printed as its shortest decimal.
        "f": st.floats(width=32, min_value=-(2.0**127), max_value=2.0**127),
        "i32": int32s,
        "i64": st.integers(-(2**63), 2**63 - 1),
        "u32": st.integers(0, 2**32 - 1),
        "u64": st.integers(0, 2**64 - 1),
        "s32": int32s,
        "flag": st.booleans(),
        "name": st.text(max_size=10),
        "blob": st.binary(max_size=10),
        "color": enum_values,
        "inner": inner_dicts,
        "tags": st.lists(st.text(max_size=3), max_size=3),
        "items": st.lists(inner_dicts, max_size=3),
        "counts": st.dictionaries(st.text(max_size=3), int32s, max_size=3),
        "by_id": st.dictionaries(int32s, inner_dicts, max_size=3),
        "colors": st.lists(enum_values, max_size=3),
        "maybe": int32s,
        "from": st.text(max_size=3),
    },
)

_INT64 = {"i64", "u64"}


def _f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _enum_json(value: object) -> str:
    return COLORS[value] if isinstance(value, int) else str(value)


def _inner_json(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": value.get("label", ""),
        "weight": value.get("weight", 0),
        "color": _enum_json(value.get("color", 0)),
    }


def _expected_json(value: dict[str, Any]) -> dict[str, Any]:
    """What ProtoJSON (with defaults, proto names) must say for the Order built from ``value``."""
    get = value.get
    result: dict[str, Any] = {
        "d": float(get("d", 0.0)),
        "f": _f32(get("f", 0.0)),
        "i32": get("i32", 0),
        "i64": str(get("i64", 0)),
        "u32": get("u32", 0),
        "u64": str(get("u64", 0)),
        "s32": get("s32", 0),
        "flag": get("flag", False),
        "name": get("name", ""),
        "blob": base64.b64encode(get("blob", b"")).decode(),
        "color": _enum_json(get("color", 0)),
        "tags": list(get("tags", [])),
        "items": [_inner_json(i) for i in get("items", [])],
        "counts": dict(get("counts", {})),
        "by_id": {str(k): _inner_json(v) for k, v in get("by_id", {}).items()},
        "colors": [_enum_json(c) for c in get("colors", [])],
        "from": get("from", ""),
    }
    if "inner" in value:
        result["inner"] = _inner_json(value["inner"])
    if "maybe" in value:
        result["maybe"] = value["maybe"]
    return result


@settings(max_examples=200, deadline=None)
@given(fields=order_dicts)
def test_valid_dicts_round_trip_through_message_to_dict(pb2: Any, fields: dict[str, Any]) -> None:
    message = build_request(pb2.Order, fields, method="Cook")
    as_dict = message_to_dict(message)
    as_dict["f"] = _f32(as_dict["f"])  # ProtoJSON prints the shortest decimal of the 32-bit float
    assert as_dict == _expected_json(fields)
    assert json_format.ParseDict(message_to_dict(message), pb2.Order()) == message
