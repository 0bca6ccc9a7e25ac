"""Source text of the generated client module (``NAME.py``) and servicer template (``NAME_servicer.py``).

The output is deterministic (no dates, no paths) so a test can regenerate and compare, and laid out the way
``ruff format`` would leave it: a signature or call that does not fit on one line gets one item per line
with a trailing comma.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

from sshfleet._codegen._model import FieldInfo, MessageInfo, MethodInfo, ServiceInfo

__all__ = ["render_client", "render_servicer"]

_LINE_LENGTH = 110
_ARG_ENTRY = re.compile(r"\s+[\w.]+ \([^)]*\): ")
_STATUS_NOT_IMPLEMENTED = 'success=False, comment="Not implemented."'


def _fit(lines: Sequence[str], width: int) -> list[str]:
    """``lines`` with every line longer than ``width`` wrapped at word boundaries, its overflow carried into
    the next line when that one continues the same paragraph (same indentation), so a proto comment's
    hand-wrapped paragraph stays a paragraph. An ``Args:`` entry (``name (type): text``) continues four
    columns further in, as the entries' own continuation lines do."""
    out: list[str] = []
    carry = ""  # words pushed off the previous line, to go in front of this one
    carry_lead = ""
    for line in [*lines, None]:
        if carry:
            if line is not None and line.strip() and _lead(line) == carry_lead:
                line = f"{carry_lead}{carry} {line.strip()}"
            else:
                out.extend(_wrap(f"{carry_lead}{carry}", width, carry_lead))
            carry = ""
        if line is None:
            break
        if len(line) <= width:
            out.append(line)
            continue
        lead = _lead(line)
        carry_lead = lead + "    " if _ARG_ENTRY.match(line) else lead
        first, *rest = _wrap(line, width, carry_lead)
        out.append(first)
        carry = " ".join(part.strip() for part in rest)
    return out


def _lead(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _wrap(line: str, width: int, subsequent_indent: str) -> list[str]:
    wrapped = textwrap.wrap(
        line, width=width, subsequent_indent=subsequent_indent, break_long_words=False, break_on_hyphens=False
    )
    return wrapped or [line]


def _docstring(text: str, indent: str) -> list[str]:
    """Lines of a triple-quoted docstring holding ``text``, long lines wrapped to the generated code's width."""
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"').strip()
    if text.endswith('"'):
        text = text[:-1] + '\\"'
    width = _LINE_LENGTH - len(indent) - 3  # room for the opening quotes on the first line
    lines = _fit(text.splitlines(), width)
    if len(lines) == 1 and len(indent) + len(lines[0]) + 6 <= _LINE_LENGTH:
        return [f'{indent}"""{lines[0]}"""']
    body = [f"{indent}{line}".rstrip() for line in lines]
    body[0] = f'{indent}"""{lines[0]}'
    return [*body, f'{indent}"""']


def _wrapped(head: str, items: Sequence[str], tail: str, indent: str) -> list[str]:
    """``head(items...)tail`` on one line if it fits, else exploded one item per line."""
    one_line = f"{indent}{head}({', '.join(items)}){tail}"
    if len(one_line) <= _LINE_LENGTH or not items:
        return [one_line]
    return [f"{indent}{head}(", *(f"{indent}    {item}," for item in items), f"{indent}){tail}"]


def _arg_doc(field: FieldInfo) -> list[str]:
    lines = field.doc.splitlines() or [""]
    first = f"{field.param} ({field.type_name}): {lines[0]}".rstrip()
    return [first, *(f"    {line}".rstrip() for line in lines[1:])]


def _client_method(method: MethodInfo) -> list[str]:
    request = method.request
    streaming_request = method.client_streaming
    timeout = "timeout" if streaming_request else method.timeout_param
    if streaming_request:
        params = ["self", f"requests: Iterable[Union[Mapping[str, object], {request.ref}]]", "*"]
    else:
        params = ["self", "*", *(f"{f.param}: Optional[{f.hint}] = None" for f in request.fields)]
    params.append(f"{timeout}: Optional[float] = None")
    streaming = method.client_streaming or method.server_streaming
    returns = "Iterator[tuple[str, Any]]" if streaming else "Responses"
    lines = _wrapped(f"def {method.name}", params, f" -> {returns}:", "    ")

    doc = [*(method.doc or f"Call {method.name} on every host.").splitlines(), "", "Args:"]
    if streaming_request:
        doc.append(f"    requests: {request.full_name} messages (or dicts of their fields) to send.")
    else:
        doc.extend(f"    {line}" for field in request.fields for line in _arg_doc(field))
    doc.append(f"    {timeout}: deadline of the call in seconds (None: the agent's default).")
    doc += ["", "Returns:"]
    if streaming:
        doc.append(f"    An iterator of (host, {method.response.full_name}) pairs, in arrival order.")
    else:
        doc.append(f"    Responses: each host's {method.response.full_name} or error.")
    lines += _docstring("\n".join(doc), "        ")

    if streaming_request:
        items = [f'"{method.name}"', "requests", f"timeout={timeout}"]
        return lines + _wrapped("return self.invoke_stream", items, "", "        ")
    entries = [f'"{f.name}": {f.param}' for f in request.fields]
    call = "invoke_stream" if method.server_streaming else "invoke"
    fields_dict = "{" + ", ".join(entries) + "}"
    one_line = f'        return self.{call}("{method.name}", {fields_dict}, timeout={timeout})'
    if len(one_line) <= _LINE_LENGTH:
        return [*lines, one_line]
    return [
        *lines,
        f"        return self.{call}(",
        f'            "{method.name}",',
        "            {",
        *(f"                {entry}," for entry in entries),
        "            },",
        f"            timeout={timeout},",
        "        )",
    ]


def render_client(info: ServiceInfo) -> str:
    """The client module: ``class <Service>AgentException(sshfleet.AgentException)``, then
    ``class <Service>Agent(sshfleet.Agent)`` with one keyword-only method per RPC, each calling the agent's
    public hooks ``invoke()`` / ``invoke_stream()``."""
    name, cls = info.proto_name, info.class_name
    exception_doc = (
        f"Raised by ``raise_for_status()`` of {cls}'s Responses when a host failed.\n\n"
        "``.responses`` holds every host's outcome."
    )
    body: list[str] = [f"class {cls}Exception(sshfleet.AgentException):"]
    body += _docstring(exception_doc, "    ")
    body += ["", "", f"class {cls}(sshfleet.Agent):"]
    body += _docstring(info.doc or f"Client of the {info.full_name} service.", "    ")
    body += [
        "",
        "    _pb2 = _pb2",
        "    _pb2_grpc = _pb2_grpc",
        f'    _service_name = "{info.full_name}"',
        f'    _servicer_module = "{name}_servicer"',
        "    _module_file = __file__",
        f"    _exception = {cls}Exception",
    ]
    if info.controller_name:
        body.append(f'    _controller_service = "{info.controller_full_name}"')
    for method in info.methods:
        body += ["", *_client_method(method)]
    text = "\n".join(body)

    abc_names = [n for n in ("Iterable", "Iterator", "Mapping", "Sequence") if re.search(rf"\b{n}\[", text)]
    typing_names = [n for n in ("Any", "Optional", "Union") if re.search(rf"\b{n}\b", text)]
    module_doc = f"Client of the {info.full_name} service ({name}.proto)."
    if info.file_doc:
        module_doc += "\n\n" + info.file_doc
    head = [
        f"# Generated by `sshfleet generate` from {name}.proto; DO NOT EDIT.",
        *_docstring(module_doc, ""),
        "",
        "from __future__ import annotations",
        "",
    ]
    if abc_names:
        head.append(f"from collections.abc import {', '.join(abc_names)}")
    if typing_names:
        head.append(f"from typing import {', '.join(typing_names)}")
    if abc_names or typing_names:
        head.append("")
    head += _foreign_imports(info.foreign_modules)
    head += [
        "import sshfleet",
        "from sshfleet import Responses",
        "",
        f"try:  # package import on the controller (agents.{name}), top-level import on the host",
        f"    from . import {name}_pb2 as _pb2",
        f"    from . import {name}_pb2_grpc as _pb2_grpc",
        "except ImportError:",
        f"    import {name}_pb2 as _pb2  # type: ignore[no-redef]",
        f"    import {name}_pb2_grpc as _pb2_grpc  # type: ignore[no-redef]",
        "",
        f'__all__ = ["{cls}", "{cls}Exception"]',
        "",
        "",
        "",
    ]
    return "\n".join(head) + text + "\n"


def _foreign_imports(modules: dict[str, str]) -> list[str]:
    """Imports of the well-known-type modules (google.protobuf.*_pb2) used, then a blank line."""
    lines = [f"from {m.rsplit('.', 1)[0]} import {m.rsplit('.', 1)[1]} as {a}" for a, m in modules.items()]
    return [*lines, ""] if lines else []


def _not_implemented(method: MethodInfo, response: MessageInfo, module: str) -> list[str]:
    reply = f"{module}.{response.py_path}"
    if response.has_status_fields:
        made = f"{reply}({_STATUS_NOT_IMPLEMENTED})"
        if method.server_streaming:
            return ["        # Until then, stream one success=False reply.", f"        return iter([{made}])"]
        return ["        # Until then, answer success=False.", f"        return {made}"]
    return [
        f"        # Until then, answer UNIMPLEMENTED ({response.full_name} has no success/comment fields).",
        "        context.set_code(grpc.StatusCode.UNIMPLEMENTED)",
        f'        context.set_details("{method.name} is not implemented.")',
        "        return iter(())" if method.server_streaming else f"        return {reply}()",
    ]


def _servicer_method(method: MethodInfo, modules: dict[str, str]) -> list[str]:
    argument = "request_iterator" if method.client_streaming else "request"
    lines = [f"    def {method.name}(self, {argument}, context):"]
    if method.doc:
        lines += _docstring(method.doc, "        ")
    lines.append(f'        log.debug("Invoking: {method.name}(...)")')
    fields = method.request.fields
    unpack = [
        f'{f.param} = getattr(request, "{f.name}")' if f.param != f.name else f"{f.param} = request.{f.name}"
        for f in fields
    ]
    if method.client_streaming:
        lines.append("        for request in request_iterator:")
        lines += [f"            {line}" for line in unpack] or ["            pass"]
    else:
        lines += [f"        {line}" for line in unpack]
    what = "stream the replies" if method.server_streaming else "do the actual work"
    source = "the args above" if fields else "the request"
    lines.append(f"        # Now use {source} to {what} of {method.name}.")
    module = modules.get(method.response.module, "pb")
    return lines + _not_implemented(method, method.response, module)


def render_servicer(info: ServiceInfo) -> str:
    """The servicer template the agent author fills in; it runs on the hosts (Python >= 3.6, no sshfleet)."""
    name, service = info.proto_name, info.service_name
    modules = {"_pb2": "pb", **{alias: alias for alias in info.foreign_modules}}
    methods: list[str] = []
    for method in info.methods:
        methods += ["", *_servicer_method(method, modules)]
    text = "\n".join(methods)
    used_foreign = {a: m for a, m in info.foreign_modules.items() if re.search(rf"\b{a}\.", text)}
    lines = [
        f"# Servicer of {info.full_name}, generated by `sshfleet generate` from {name}.proto as a",
        "# starting point. Fill in the methods: `sshfleet generate` never overwrites this file unless",
        "# --force. It runs on the hosts, so it may use only the standard library, grpc and protobuf,",
        "# on Python >= 3.6.",
        *_docstring(info.doc or f"Servicer of {info.full_name}.", ""),
        "",
        "import logging",
        "",
    ]
    if "grpc.StatusCode" in text:
        lines.append("import grpc")
    lines += _foreign_imports(used_foreign)
    if lines[-1]:
        lines.append("")
    lines += [
        "try:  # package import on the controller, top-level import on the host",
        f"    from . import {name}_pb2 as pb",
        f"    from . import {name}_pb2_grpc as pb_grpc",
        "except ImportError:",
        f"    import {name}_pb2 as pb",
        f"    import {name}_pb2_grpc as pb_grpc",
        "",
        "log = logging.getLogger(__name__)",
        "",
        "",
        "def AddServicer(server, controller=None):",
        f"    pb_grpc.add_{service}Servicer_to_server({service}Servicer(controller), server)",
        "",
        "",
        f"class {service}Servicer(pb_grpc.{service}Servicer):",
        *_docstring(f"Implements {info.full_name} on the host; one instance serves every call.", "    "),
        "",
        "    def __init__(self, controller=None):",
        "        super().__init__()",
        *(
            [
                f"        # A ready pb_grpc.{info.controller_name}Stub: call the controller as any gRPC stub, e.g.",
                "        # self.controller.Method(pb.Request(...)), or .future(...) not to wait. None when the",
                "        # agent was started without controller=.",
            ]
            if info.controller_name
            else []
        ),
        "        self.controller = controller",
        f'        log.debug("{service}Servicer created.")',
    ]
    return "\n".join(lines) + "\n" + text + "\n"
