"""What the templates need from a compiled .proto: the service, its methods, fields, type hints, comments.

Built from the FileDescriptorProto (not the runtime descriptors) because only its SourceCodeInfo keeps the
comments that become docstrings.
"""

from __future__ import annotations

import keyword
import textwrap
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2

from sshfleet._codegen._protoc import CompiledProto
from sshfleet.errors import ProtoError

__all__ = ["FieldInfo", "MessageInfo", "MethodInfo", "ServiceInfo", "service_info"]

_F = descriptor_pb2.FieldDescriptorProto

_SCALAR_HINTS = {
    _F.TYPE_DOUBLE: "float",
    _F.TYPE_FLOAT: "float",
    _F.TYPE_INT64: "int",
    _F.TYPE_UINT64: "int",
    _F.TYPE_INT32: "int",
    _F.TYPE_FIXED64: "int",
    _F.TYPE_FIXED32: "int",
    _F.TYPE_BOOL: "bool",
    _F.TYPE_STRING: "str",
    _F.TYPE_BYTES: "bytes",
    _F.TYPE_UINT32: "int",
    _F.TYPE_SFIXED32: "int",
    _F.TYPE_SFIXED64: "int",
    _F.TYPE_SINT32: "int",
    _F.TYPE_SINT64: "int",
}

# Field numbers inside descriptor.proto, the steps of a SourceCodeInfo location path.
_FILE_MESSAGE, _FILE_SERVICE = 4, 6
_MESSAGE_FIELD, _MESSAGE_NESTED = 2, 3
_SERVICE_METHOD = 2


@dataclass(frozen=True)
class FieldInfo:
    name: str  # the proto name, the key passed to invoke()
    param: str  # the Python keyword: the name, or name_ when it is a Python keyword
    hint: str  # the type hint without Optional
    type_name: str  # the proto type as written, for docstrings: "double", "repeated string", ...
    doc: str


@dataclass(frozen=True)
class MessageInfo:
    full_name: str
    module: str  # "_pb2" for this file, else the alias of a well-known-types module
    py_path: str  # attribute path inside that module: "Outer.Inner"
    fields: tuple[FieldInfo, ...]
    has_status_fields: bool  # bool success + string comment, as in the seed's Response

    @property
    def ref(self) -> str:
        return f"{self.module}.{self.py_path}"


@dataclass(frozen=True)
class MethodInfo:
    name: str
    doc: str
    request: MessageInfo
    response: MessageInfo
    client_streaming: bool
    server_streaming: bool
    timeout_param: str  # "timeout", or "rpc_timeout" when the request has a field called timeout


@dataclass(frozen=True)
class ServiceInfo:
    proto_name: str  # the .proto stem: modules <proto_name>_pb2, <proto_name>_pb2_grpc, ...
    service_name: str  # as written in the proto
    full_name: str  # package-qualified, as gRPC routes it
    class_name: str  # the client class: service_name, with "Agent" appended if missing
    doc: str
    file_doc: str
    methods: tuple[MethodInfo, ...]
    foreign_modules: dict[str, str] = field(default_factory=dict)  # alias -> module, for type hints
    # The proto's second service, <Service>Controller, which the controller serves for the hosts ("" if none).
    controller_name: str = ""
    controller_full_name: str = ""


def _clean_comment(text: str) -> str:
    return textwrap.dedent(text).strip()


class _Index:
    """Every message of the proto and its imports, by full name, plus the proto's comments by location."""

    def __init__(self, compiled: CompiledProto) -> None:
        self.compiled = compiled
        self.messages: dict[str, tuple[descriptor_pb2.DescriptorProto, str, str, tuple[int, ...]]] = {}
        self.foreign_modules: dict[str, str] = {}
        main = compiled.file
        for file in compiled.files.file:
            local = file.name == main.name
            module = "_pb2" if local else self._module_alias(file.name)
            prefix = f".{file.package}" if file.package else ""
            for index, message in enumerate(file.message_type):
                self._add_message(message, prefix, "", module, (_FILE_MESSAGE, index) if local else ())
        self.comments: dict[tuple[int, ...], str] = {}
        for location in main.source_code_info.location:
            text = location.leading_comments or location.trailing_comments
            if text.strip():
                self.comments[tuple(location.path)] = _clean_comment(text)
        self.used_foreign: dict[str, str] = {}

    def _module_alias(self, file_name: str) -> str:
        module = file_name[: -len(".proto")].replace("/", ".") + "_pb2"
        alias = "_" + module.rsplit(".", 1)[-1]
        self.foreign_modules[alias] = module
        return alias

    def _add_message(
        self,
        message: descriptor_pb2.DescriptorProto,
        prefix: str,
        py_prefix: str,
        module: str,
        location: tuple[int, ...],
    ) -> None:
        full = f"{prefix}.{message.name}"
        py_path = f"{py_prefix}{message.name}"
        self.messages[full] = (message, module, py_path, location)
        for index, nested in enumerate(message.nested_type):
            nested_location = (*location, _MESSAGE_NESTED, index) if location else ()
            self._add_message(nested, full, py_path + ".", module, nested_location)

    def message_ref(self, type_name: str) -> str:
        _, module, py_path, _ = self.messages[type_name]
        if module != "_pb2":
            self.used_foreign[module] = self.foreign_modules[module]
        return f"{module}.{py_path}"

    def message_info(self, type_name: str) -> MessageInfo:
        message, module, py_path, location = self.messages[type_name]
        if module != "_pb2":
            self.used_foreign[module] = self.foreign_modules[module]
        fields = tuple(
            self._field_info(f, (*location, _MESSAGE_FIELD, i) if location else ()) for i, f in enumerate(message.field)
        )
        by_name = {f.name: f for f in message.field}
        success, comment = by_name.get("success"), by_name.get("comment")
        has_status = (
            success is not None
            and comment is not None
            and success.type == _F.TYPE_BOOL
            and comment.type == _F.TYPE_STRING
            and success.label != _F.LABEL_REPEATED
            and comment.label != _F.LABEL_REPEATED
        )
        return MessageInfo(type_name.lstrip("."), module, py_path, fields, has_status)

    def _field_info(self, proto: descriptor_pb2.FieldDescriptorProto, location: tuple[int, ...]) -> FieldInfo:
        hint, type_name = self._hint(proto)
        param = proto.name + "_" if keyword.iskeyword(proto.name) or proto.name == "self" else proto.name
        return FieldInfo(proto.name, param, hint, type_name, self.comments.get(location, ""))

    def _hint(self, proto: descriptor_pb2.FieldDescriptorProto) -> tuple[str, str]:
        """(Python hint, proto type name) of a field, repeated and map fields included."""
        if proto.type == _F.TYPE_MESSAGE:
            message = self.messages[proto.type_name][0]
            if proto.label == _F.LABEL_REPEATED and message.options.map_entry:
                key, value = (self._hint(f) for f in message.field)
                return f"Mapping[{key[0]}, {value[0]}]", f"map<{key[1]}, {value[1]}>"
            hint = f"Union[Mapping[str, object], {self.message_ref(proto.type_name)}]"
            type_name = proto.type_name.lstrip(".")
        elif proto.type == _F.TYPE_ENUM:
            hint, type_name = "Union[int, str]", proto.type_name.lstrip(".")
        elif proto.type in _SCALAR_HINTS:
            hint = _SCALAR_HINTS[proto.type]
            type_name = _F.Type.Name(proto.type)[len("TYPE_") :].lower()
        else:
            raise ProtoError(f"{self.compiled.proto_path}: field {proto.name!r} is a group; use a message")
        if proto.label == _F.LABEL_REPEATED:
            return f"Sequence[{hint}]", f"repeated {type_name}"
        return hint, type_name


def _free_name(base: str, taken: set[str]) -> str:
    name = base
    while name in taken:
        name = "rpc_" + name if not name.startswith("rpc_") else name + "_"
    return name


def service_info(compiled: CompiledProto) -> ServiceInfo:
    """Describe the agent's service of ``compiled`` and its optional ``<Service>Controller`` (served by the
    controller for the hosts); :class:`ProtoError` for any other set of services."""
    file = compiled.file
    where = compiled.proto_path
    names = [s.name for s in file.service]
    controllers = [n for n in names if n.endswith("Controller") and n[: -len("Controller")] in names]
    agents = [n for n in names if n not in controllers]
    if len(agents) != 1 or len(controllers) > 1:
        found = ", ".join(names) or "none"
        raise ProtoError(
            f"{where}: an agent .proto must define one service, and optionally a second one named after it with "
            f"'Controller' appended that the controller serves for the hosts (found: {found})"
        )
    position = names.index(agents[0])
    service = file.service[position]
    index = _Index(compiled)
    methods = []
    for number, method in enumerate(service.method):
        if keyword.iskeyword(method.name) or method.name.startswith("_"):
            raise ProtoError(f"{where}: rpc {method.name!r} cannot be a Python method name; rename it")
        request = index.message_info(method.input_type)
        response = index.message_info(method.output_type)
        params = {f.param for f in request.fields}
        methods.append(
            MethodInfo(
                name=method.name,
                doc=index.comments.get((_FILE_SERVICE, position, _SERVICE_METHOD, number), ""),
                request=request,
                response=response,
                client_streaming=method.client_streaming,
                server_streaming=method.server_streaming,
                timeout_param=_free_name("timeout", params),
            )
        )
    full_name = f"{file.package}.{service.name}" if file.package else service.name
    class_name = service.name if service.name.endswith("Agent") else service.name + "Agent"
    file_doc = _file_comment(file)
    return ServiceInfo(
        proto_name=compiled.name,
        service_name=service.name,
        full_name=full_name,
        class_name=class_name,
        doc=index.comments.get((_FILE_SERVICE, position), ""),
        file_doc=file_doc,
        methods=tuple(methods),
        foreign_modules=dict(sorted(index.used_foreign.items())),
        controller_name=controllers[0] if controllers else "",
        controller_full_name=(f"{file.package}.{controllers[0]}" if file.package else controllers[0])
        if controllers
        else "",
    )


def _file_comment(file: descriptor_pb2.FileDescriptorProto) -> str:
    # protoc attaches the comment above `syntax = ...` to the syntax statement (path [12]).
    for location in file.source_code_info.location:
        if list(location.path) == [12] and location.leading_detached_comments:
            return _clean_comment(location.leading_detached_comments[0])
        if list(location.path) == [12] and location.leading_comments:
            return _clean_comment(location.leading_comments)
    return ""
