# Shipped in agent bundles as `sshfleet_pb2_builder`: what protobuf's `google.protobuf.internal.builder` (3.20+)
# does, for hosts whose newest protobuf is older (3.19 on Python 3.6). Generated *_pb2.py files call its two
# functions; the adapted copies (sshfleet/_payload.py) import this module when protobuf lacks its own.
# Standard library + protobuf only; never imports sshfleet.
from google.protobuf import message as _message
from google.protobuf import reflection as _reflection
from google.protobuf import symbol_database as _symbol_database
from google.protobuf.internal import enum_type_wrapper

_sym_db = _symbol_database.Default()


def BuildMessageAndEnumDescriptors(file_des, module):
    """Put every message and enum descriptor in ``module`` under the names gencode gives them (_NAME_NESTED)."""

    def nested(msg_des, prefix):
        for name, nested_msg in msg_des.nested_types_by_name.items():
            module_name = prefix + name.upper()
            module[module_name] = nested_msg
            nested(nested_msg, module_name + "_")
        for enum_des in msg_des.enum_types:
            module[prefix + enum_des.name.upper()] = enum_des

    for name, msg_des in file_des.message_types_by_name.items():
        module_name = "_" + name.upper()
        module[module_name] = msg_des
        nested(msg_des, module_name + "_")


def BuildTopDescriptorsAndMessages(file_des, module_name, module):
    """Make the message classes, enum wrappers and values, extensions and service descriptors of the file."""

    def build(msg_des):
        members = {name: build(nested) for name, nested in msg_des.nested_types_by_name.items()}
        members["DESCRIPTOR"] = msg_des
        members["__module__"] = module_name
        cls = _reflection.GeneratedProtocolMessageType(msg_des.name, (_message.Message,), members)
        _sym_db.RegisterMessage(cls)
        return cls

    for name, enum_des in file_des.enum_types_by_name.items():
        module["_" + name.upper()] = enum_des
        module[name] = enum_type_wrapper.EnumTypeWrapper(enum_des)
        for value in enum_des.values:
            module[value.name] = value.number
    for name, extension_des in file_des.extensions_by_name.items():
        module[name.upper() + "_FIELD_NUMBER"] = extension_des.number
        module[name] = extension_des
    for name, service in file_des.services_by_name.items():
        module["_" + name.upper()] = service
    for name, msg_des in file_des.message_types_by_name.items():
        module[name] = build(msg_des)
