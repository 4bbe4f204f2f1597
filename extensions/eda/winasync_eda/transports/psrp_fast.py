"""Cheap paths around psrpcore for the three PSRP messages every poll carries.

psrpcore's generic CLIXML (de)serializer builds a PSObject tree per message: about 5 ms of the
8 ms of CPU a poll cost the asyncio client (cProfile, 50 hosts). A poll's messages always have
the same shape, so:

- CreatePipeline: psrpcore serializes the poll command once per parameter list with marker
  values; each poll fills the markers with its escaped strings (``PipelineTemplate``);
- PipelineOutput of one string (``<S>..</S>``) and PipelineState without an error record are
  read directly; anything else goes through psrpcore as before (``FastRunspacePool``).

The message framing (headers, fragments) stays psrpcore's.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, Final
from xml.etree import ElementTree as ET

from psrpcore import ClientPowerShell, ClientRunspacePool, PSRemotingCrypto, PSRPEvent, StreamType
from psrpcore._payload import PSRPMessage, create_message
from psrpcore.types import PSInvocationState, PSRPMessageType, serialize

_MARKER: Final = "WinasyncEdaValue{}Marker"
# MS-PSRP 2.2.5.1.1 String: C0 and C1 controls and what UTF-16 writes as surrogates are escaped
# as _xHHHH_ (one per UTF-16 unit), and so is the "_" of a literal "_x" (either case)
_NEEDS_ESCAPE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\U00010000-\U0010ffff]|_(?=[xX])"
)
_PLAIN_OUTPUT: Final = re.compile(rb"<S>([^<&]*)</S>\Z")
_STATE: Final = re.compile(rb'<Obj RefId="\d+"><MS><I32 N="PipelineState">(\d+)</I32></MS></Obj>\Z')
_XML_DECLARATION: Final = b"<?xml version='1.0' encoding='utf-8'?>\n"


def clixml_string(value: str) -> str:
    """A string as the text of a CLIXML ``<S>`` element (PSRP escapes, then XML's)."""
    if _NEEDS_ESCAPE.search(value):
        value = _NEEDS_ESCAPE.sub(_escape_unit, value)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_unit(match: re.Match[str]) -> str:
    data = match.group(0).encode("utf-16-be", "surrogatepass")
    return "".join(f"_x{data[i]:02X}{data[i + 1]:02X}_" for i in range(0, len(data), 2))


class PipelineTemplate:
    """The CreatePipeline CLIXML of ``command -Name1 value1 -Name2 value2 ...`` (string values)."""

    def __init__(self, command: str, names: Sequence[str]) -> None:
        self.names = tuple(names)
        pool = ClientRunspacePool()
        ps = ClientPowerShell(pool)
        ps.add_command(command)
        for index, name in enumerate(self.names):
            ps.add_parameter(name, _MARKER.format(index))
        element = serialize(ps.metadata, PSRemotingCrypto())
        text = ET.tostring(element, encoding="utf-8", method="xml").decode("utf-8")
        self._parts: list[str] = []
        for index in range(len(self.names)):
            before, marker, text = text.partition(_MARKER.format(index))
            if not marker:
                raise ValueError("psrpcore changed how it writes a parameter")
            self._parts.append(before)
        self._parts.append(text)

    def render(self, values: Mapping[str, str]) -> bytes:
        out = [self._parts[0]]
        for name, part in zip(self.names, self._parts[1:], strict=True):
            out.append(clixml_string(values[name]))
            out.append(part)
        return "".join(out).encode("utf-8")


@functools.lru_cache(maxsize=16)
def template(command: str, names: tuple[str, ...]) -> PipelineTemplate:
    return PipelineTemplate(command, names)


class FastRunspacePool(ClientRunspacePool):
    """psrpcore's client pool, with a pipeline started from ready CLIXML and the poll's answer
    read without the generic deserializer."""

    def start_prepared(self, ps: ClientPowerShell, clixml: bytes) -> None:
        """``ps.start()`` with the CreatePipeline CLIXML already built (``PipelineTemplate``)."""
        if ps.state != PSInvocationState.NotStarted:
            raise ValueError(f"the pipeline is {ps.state.name}")
        message_type = PSRPMessageType.CreatePipeline
        raw = create_message(True, message_type, clixml, self.runspace_pool_id, ps.pipeline_id)
        self._send_buffer.append(
            PSRPMessage(
                message_type,
                bytearray(raw),
                self.runspace_pool_id,
                ps.pipeline_id,
                self._fragment_counter,
                StreamType.default,
            )
        )
        ps.state = PSInvocationState.Running

    def _process_ApplicationPrivateData(self, event: Any) -> None:  # noqa: N802 - psrpcore's name
        super()._process_ApplicationPrivateData(event)
        # the host's PSVersionTable and the like, never read here: kept, it cost RSS per host
        self.application_private_data = {}

    def _process_message(self, message: Any) -> PSRPEvent[Any, Any]:
        ps_object = _read_simple(message.message_type, bytes(message.data))
        if ps_object is None or message.pipeline_id not in self.pipeline_table:
            return super()._process_message(message)
        event: PSRPEvent[Any, Any] = PSRPEvent.create(
            message.message_type, ps_object, message.runspace_pool_id, message.pipeline_id
        )
        getattr(self, f"_process_{message.message_type.name}")(event)
        return event


def _read_simple(message_type: PSRPMessageType, data: bytes) -> Any:
    """The object of a PipelineOutput string or a PipelineState without error, else None."""
    data = data.removeprefix(_XML_DECLARATION)
    if message_type == PSRPMessageType.PipelineOutput:
        match = _PLAIN_OUTPUT.match(data)
        if match is None or b"_x" in data or b"_X" in data:
            return None  # entities or PSRP escapes: psrpcore reads those
        return match.group(1).decode("utf-8")
    if message_type == PSRPMessageType.PipelineState:
        match = _STATE.match(data)
        if match:
            return SimpleNamespace(PipelineState=int(match.group(1)))
    return None
