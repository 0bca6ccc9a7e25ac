"""Turn a caller's keyword arguments into a request message, and messages back into plain dicts.

Protobuf's own constructor accepts ``True`` for an ``int32``, silently truncates nothing but raises
``TypeError``/``ValueError`` with messages that name neither the method nor the field. sshfleet checks every
value itself first so that a caller mistake is a :class:`~sshfleet.errors.UsageError` raised before anything
goes on the network, with a message that names the method, the field path, the proto type and what was given.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from sshfleet.errors import UsageError

__all__ = ["build_request", "message_to_dict"]

_FD = FieldDescriptor

_INT_RANGES: dict[int, tuple[int, int]] = {
    _FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _FD.TYPE_UINT32: (0, 2**32 - 1),
    _FD.TYPE_FIXED32: (0, 2**32 - 1),
    _FD.TYPE_UINT64: (0, 2**64 - 1),
    _FD.TYPE_FIXED64: (0, 2**64 - 1),
}

_TYPE_NAMES: dict[int, str] = {
    _FD.TYPE_DOUBLE: "double",
    _FD.TYPE_FLOAT: "float",
    _FD.TYPE_INT64: "int64",
    _FD.TYPE_UINT64: "uint64",
    _FD.TYPE_INT32: "int32",
    _FD.TYPE_FIXED64: "fixed64",
    _FD.TYPE_FIXED32: "fixed32",
    _FD.TYPE_BOOL: "bool",
    _FD.TYPE_STRING: "string",
    _FD.TYPE_BYTES: "bytes",
    _FD.TYPE_UINT32: "uint32",
    _FD.TYPE_SFIXED32: "sfixed32",
    _FD.TYPE_SFIXED64: "sfixed64",
    _FD.TYPE_SINT32: "sint32",
    _FD.TYPE_SINT64: "sint64",
}

_FLOAT32_MAX = 3.4028234663852886e38


def build_request(message_class: type[Message], fields: Mapping[str, object], *, method: str) -> Message:
    """Build ``message_class(**fields)`` after checking every name and value.

    ``None`` means "not set" at any depth, so unset fields keep their proto defaults. Nested messages may be
    given as dicts or message objects, repeated fields as lists or tuples, maps as dicts, enums as their
    number or value name. Raises :class:`UsageError` naming ``method`` and the field path on any mistake.
    """
    message = message_class()
    _fill(message, fields, f"{method}()", "")
    return message


def message_to_dict(message: Message) -> dict[str, Any]:
    """The ProtoJSON form of ``message`` with proto field names and every default shown (for ``--json``).

    As in ProtoJSON, 64-bit integers come out as strings, bytes as base64 and enums as value names.
    """
    to_dict: Any = json_format.MessageToDict
    try:
        result: dict[str, Any] = to_dict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26 named the option differently
        result = to_dict(message, preserving_proto_field_name=True, including_default_value_fields=True)
    return result


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is None:  # protobuf < 5.29
        return bool(getattr(field, "label", None) == _FD.LABEL_REPEATED)
    return bool(repeated)


def _message_type(field: FieldDescriptor) -> Descriptor:
    message_type = field.message_type
    if message_type is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return message_type


def _enum_type(field: FieldDescriptor) -> EnumDescriptor:
    enum_type = field.enum_type
    if enum_type is None:
        raise TypeError(f"{field.full_name} is not an enum field")
    return enum_type


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == _FD.TYPE_MESSAGE and _is_repeated(field) and bool(_message_type(field).GetOptions().map_entry)


def _type_name(field: FieldDescriptor) -> str:
    if field.type == _FD.TYPE_MESSAGE:
        return str(_message_type(field).full_name)
    if field.type == _FD.TYPE_ENUM:
        return f"enum {_enum_type(field).full_name}"
    return _TYPE_NAMES.get(field.type, "group")


def _short(value: object) -> str:
    # Huge ints: repr() is unreadable, and past 4300 digits Python refuses to convert them at all.
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def _describe(value: object) -> str:
    text = _short(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _fill(message: Message, fields: Mapping[str, object], where: str, prefix: str) -> None:
    # The stubs type DESCRIPTOR as "pure-Python or upb descriptor"; both have the same interface.
    by_name = cast(Descriptor, message.DESCRIPTOR).fields_by_name
    oneofs_seen: dict[str, str] = {}
    for name, value in fields.items():
        if not isinstance(name, str):
            raise UsageError(f"{where} field names must be str, got {_describe(name)}")
        field = by_name.get(name)
        if field is None:
            raise UsageError(_unknown_field(where, prefix, name, list(by_name)))
        if value is None:
            continue
        path = prefix + name
        oneof = field.containing_oneof
        # proto3 "optional" is a synthetic oneof of one field; only real oneofs can clash.
        if oneof is not None and len(oneof.fields) > 1:
            other = oneofs_seen.get(oneof.name)
            if other is not None:
                raise UsageError(
                    f"{where} fields '{prefix}{other}' and '{path}' are both in oneof '{oneof.name}'; set at most one"
                )
            oneofs_seen[oneof.name] = name
        if _is_map(field):
            _fill_map(message, field, value, where, path)
        elif _is_repeated(field):
            _fill_repeated(message, field, value, where, path)
        elif field.type == _FD.TYPE_MESSAGE:
            _fill_submessage(getattr(message, name), field, value, where, path)
        else:
            setattr(message, name, _scalar(field, value, where, path))


def _unknown_field(where: str, prefix: str, name: str, known: list[str]) -> str:
    inside = f" in '{prefix.rstrip('.')}'" if prefix else ""
    text = f"{where} got an unknown field '{name}'{inside}; fields: {', '.join(known) or '(none)'}"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        text += f" (did you mean '{close[0]}'?)"
    return text


def _fill_submessage(target: Message, field: FieldDescriptor, value: object, where: str, path: str) -> None:
    """Fill ``target`` (a submessage, a repeated element or a map value) from a dict or a message."""
    expected = _message_type(field)
    if isinstance(value, Message):
        if value.DESCRIPTOR.full_name != expected.full_name:
            raise UsageError(
                f"{where} field '{path}' expects {expected.full_name} (a dict or message), "
                f"got message {value.DESCRIPTOR.full_name}"
            )
        target.CopyFrom(value)
    elif isinstance(value, Mapping):
        _fill(target, value, where, path + ".")
    else:
        raise UsageError(
            f"{where} field '{path}' expects {expected.full_name} (a dict or message), got {_describe(value)}"
        )
    # An empty dict or message still means "present": without this the submessage would stay unset.
    target.SetInParent()


def _as_sequence(value: object, where: str, path: str, field: FieldDescriptor) -> Sequence[object]:
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Sequence):
        raise UsageError(
            f"{where} field '{path}' is repeated {_type_name(field)}: expects a list or tuple, got {_describe(value)}"
        )
    return value


def _fill_repeated(message: Message, field: FieldDescriptor, value: object, where: str, path: str) -> None:
    items = _as_sequence(value, where, path, field)
    container = getattr(message, field.name)
    if field.type == _FD.TYPE_MESSAGE:
        for index, item in enumerate(items):
            _fill_submessage(container.add(), field, item, where, f"{path}[{index}]")
    else:
        container.extend(_scalar(field, item, where, f"{path}[{index}]") for index, item in enumerate(items))


def _fill_map(message: Message, field: FieldDescriptor, value: object, where: str, path: str) -> None:
    if not isinstance(value, Mapping):
        raise UsageError(f"{where} field '{path}' is a map: expects a dict, got {_describe(value)}")
    entry = _message_type(field)
    key_field = entry.fields_by_name["key"]
    value_field = entry.fields_by_name["value"]
    container = getattr(message, field.name)
    for key, item in value.items():
        key_path = f"{path}[{key!r}]"
        checked_key = _scalar(key_field, key, where, f"{path} key {key!r}")
        if item is None:
            raise UsageError(f"{where} field '{key_path}' is None; map values must be set")
        if value_field.type == _FD.TYPE_MESSAGE:
            _fill_submessage(container[checked_key], value_field, item, where, key_path)
        else:
            container[checked_key] = _scalar(value_field, item, where, key_path)


def _scalar(field: FieldDescriptor, value: object, where: str, path: str) -> object:
    """Check one scalar or enum value against ``field``'s type; return what protobuf should store."""
    kind = field.type

    def wrong(extra: str = "") -> UsageError:
        expects = f"{where} field '{path}' expects {_type_name(field)}"
        return UsageError(f"{expects}, got {_describe(value)}{extra}")

    if value is None:
        raise wrong()
    if kind in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise UsageError(
                f"{where} field '{path}' is {_type_name(field)}: {_short(value)} is out of range [{low}, {high}]"
            )
        return value
    if kind in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        try:
            number = float(value)
        except OverflowError:
            message = f"{where} field '{path}' is {_type_name(field)}: {_short(value)} is out of range"
            raise UsageError(message) from None
        if kind == _FD.TYPE_FLOAT and math.isfinite(number) and abs(number) > _FLOAT32_MAX:
            raise UsageError(f"{where} field '{path}' is float: {value} is out of range for 32 bits")
        return number
    if kind == _FD.TYPE_BOOL:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if kind == _FD.TYPE_STRING:
        if not isinstance(value, str):
            raise wrong("; decode bytes first" if isinstance(value, (bytes, bytearray)) else "")
        return value
    if kind == _FD.TYPE_BYTES:
        if not isinstance(value, (bytes, bytearray)):
            raise wrong("; encode str first" if isinstance(value, str) else "")
        return bytes(value)
    if kind == _FD.TYPE_ENUM:
        return _enum_value(field, value, where, path)
    raise UsageError(f"{where} field '{path}' has type {_type_name(field)}, which sshfleet cannot set")


def _enum_value(field: FieldDescriptor, value: object, where: str, path: str) -> int:
    enum = _enum_type(field)
    names = list(enum.values_by_name)
    if isinstance(value, str):
        known = enum.values_by_name.get(value)
        if known is None:
            text = f"{where} field '{path}' has no enum value '{value}'; values: {', '.join(names)}"
            close = difflib.get_close_matches(value, names, n=1)
            if close:
                text += f" (did you mean '{close[0]}'?)"
            raise UsageError(text)
        return int(known.number)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(
            f"{where} field '{path}' expects enum {enum.full_name} (int or one of {', '.join(names)}), "
            f"got {_describe(value)}"
        )
    # Closed (proto2) enums reject numbers they do not define; open (proto3) ones keep any int32.
    if getattr(enum, "is_closed", False) and value not in enum.values_by_number:
        raise UsageError(
            f"{where} field '{path}': {value} is not a value of closed enum {enum.full_name}; "
            f"values: {', '.join(f'{v.name}={v.number}' for v in enum.values)}"
        )
    if not -(2**31) <= value <= 2**31 - 1:
        raise UsageError(f"{where} field '{path}' is enum {enum.full_name}: {_short(value)} is out of int32 range")
    return value
