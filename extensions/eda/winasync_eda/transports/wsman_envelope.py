"""The WS-Management (MS-WSMV) envelopes of a PSRP client, as text in and out; no I/O.

Only what the asyncio client (``aio_psrp``) sends: Create (a PowerShell shell with its
creationXml), Command, Send, Receive, Signal and Delete, and what it reads back (the shell id,
the Receive streams and command state, a WSManFault). Envelopes are built from string templates:
an element tree per request costs more CPU than the whole request is worth at fleet scale.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Final
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

NS_S: Final = "http://www.w3.org/2003/05/soap-envelope"
NS_WSA: Final = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSMAN: Final = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_WSMV: Final = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"
NS_RSP: Final = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
NS_FAULT: Final = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
NS_PWSH: Final = "http://schemas.microsoft.com/powershell"

PWSH_RESOURCE: Final = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"
ANONYMOUS: Final = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
ACTION_CREATE: Final = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACTION_DELETE: Final = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACTION_COMMAND: Final = f"{NS_RSP}/Command"
ACTION_SEND: Final = f"{NS_RSP}/Send"
ACTION_RECEIVE: Final = f"{NS_RSP}/Receive"
ACTION_SIGNAL: Final = f"{NS_RSP}/Signal"
SIGNAL_TERMINATE: Final = f"{NS_RSP}/signal/Terminate"
# PowerShell's stop (Ctrl+C) of a running pipeline (MS-PSRP 3.1.5.4.5)
SIGNAL_PS_CTRL_C: Final = "powershell/signal/ctrl_c"
COMMAND_DONE: Final = f"{NS_RSP}/CommandState/Done"
PROTOCOL_VERSION: Final = "2.3"
# WinRM's default MaxEnvelopeSizekb is 500 on current Windows, 150 on old ones: ask the smaller
MAX_ENVELOPE: Final = 153600
# the WSManFault code of a Receive whose OperationTimeout ran out with nothing to say
ERROR_OPERATION_TIMEDOUT: Final = 0x80338029

_HEADER: Final = (
    f'<s:Envelope xmlns:s="{NS_S}" xmlns:a="{NS_WSA}" xmlns:w="{NS_WSMAN}" '
    f'xmlns:p="{NS_WSMV}" xmlns:rsp="{NS_RSP}"><s:Header>'
    '<a:Action s:mustUnderstand="true">{action}</a:Action>'
    '<w:Locale s:mustUnderstand="false" xml:lang="en-US"/>'
    '<p:DataLocale s:mustUnderstand="false" xml:lang="en-US"/>'
    f'<w:MaxEnvelopeSize s:mustUnderstand="true">{MAX_ENVELOPE}</w:MaxEnvelopeSize>'
    "<a:MessageID>{message_id}</a:MessageID>"
    "<w:OperationTimeout>PT{timeout}S</w:OperationTimeout>"
    f'<a:ReplyTo><a:Address s:mustUnderstand="true">{ANONYMOUS}</a:Address></a:ReplyTo>'
    '<w:ResourceURI s:mustUnderstand="true">{resource}</w:ResourceURI>'
    "<a:To>{to}</a:To>{extra}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
)
_PROTOCOL_OPTION: Final = (
    '<w:OptionSet s:mustUnderstand="true"><w:Option Name="protocolversion" MustComply="true">'
    f"{PROTOCOL_VERSION}</w:Option></w:OptionSet>"
)
_KEEPALIVE_OPTION: Final = (
    '<w:OptionSet s:mustUnderstand="true">'
    '<w:Option Name="WSMAN_CMDSHELL_OPTION_KEEPALIVE">TRUE</w:Option></w:OptionSet>'
)


class EnvelopeError(Exception):
    """A reply that is not the WS-Management answer expected."""


@dataclass(frozen=True)
class WSManFault:
    """The WSManFault of an HTTP 500 reply."""

    code: int | None
    reason: str


@dataclass(frozen=True)
class Request:
    """One envelope to POST, with the MessageID its reply must relate to."""

    message_id: str
    body: bytes


def new_message_id() -> str:
    return f"uuid:{str(uuid.uuid4()).upper()}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ShellEnvelopes:
    """The envelopes of one PowerShell shell on one endpoint (``to`` is the endpoint's URL)."""

    def __init__(self, to: str, resource: str = PWSH_RESOURCE) -> None:
        self.to = escape(to)
        self.resource = escape(resource)

    def _build(
        self, action: str, timeout_s: int, body: str, *, shell_id: str | None, extra: str = ""
    ) -> Request:
        message_id = new_message_id()
        if shell_id is not None:
            extra += (
                f'<w:SelectorSet><w:Selector Name="ShellId">{escape(shell_id)}</w:Selector>'
                "</w:SelectorSet>"
            )
        text = _HEADER.format(
            action=action,
            message_id=message_id,
            timeout=max(1, int(timeout_s)),
            resource=self.resource,
            to=self.to,
            extra=extra,
            body=body,
        )
        return Request(message_id, text.encode("utf-8"))

    def create(
        self, shell_id: str, creation: bytes, idle_timeout_s: int | None, timeout_s: int
    ) -> Request:
        """Create the shell of a runspace pool; ``creation`` is its first PSRP fragments."""
        idle = (
            f"<rsp:IdleTimeOut>PT{int(idle_timeout_s)}S</rsp:IdleTimeOut>" if idle_timeout_s else ""
        )
        body = (
            f'<rsp:Shell ShellId="{escape(shell_id)}"><rsp:InputStreams>stdin pr</rsp:InputStreams>'
            f"<rsp:OutputStreams>stdout</rsp:OutputStreams>{idle}"
            f'<creationXml xmlns="{NS_PWSH}">{_b64(creation)}</creationXml></rsp:Shell>'
        )
        return self._build(ACTION_CREATE, timeout_s, body, shell_id=None, extra=_PROTOCOL_OPTION)

    def command(self, shell_id: str, command_id: str, data: bytes, timeout_s: int) -> Request:
        """Start a pipeline: its CreatePipeline fragment rides in the Arguments."""
        body = (
            f'<rsp:CommandLine CommandId="{escape(command_id)}"><rsp:Command></rsp:Command>'
            f"<rsp:Arguments>{_b64(data)}</rsp:Arguments></rsp:CommandLine>"
        )
        return self._build(ACTION_COMMAND, timeout_s, body, shell_id=shell_id)

    def send(self, shell_id: str, command_id: str | None, data: bytes, timeout_s: int) -> Request:
        """More PSRP fragments for the pool (no ``command_id``) or a pipeline."""
        attr = f' CommandId="{escape(command_id)}"' if command_id else ""
        body = f'<rsp:Send><rsp:Stream Name="stdin"{attr}>{_b64(data)}</rsp:Stream></rsp:Send>'
        return self._build(ACTION_SEND, timeout_s, body, shell_id=shell_id)

    def receive(self, shell_id: str, command_id: str | None, timeout_s: int) -> Request:
        """Wait up to ``timeout_s`` (the OperationTimeout) for the pool's or a pipeline's output."""
        attr = f' CommandId="{escape(command_id)}"' if command_id else ""
        body = f"<rsp:Receive><rsp:DesiredStream{attr}>stdout</rsp:DesiredStream></rsp:Receive>"
        return self._build(
            ACTION_RECEIVE, timeout_s, body, shell_id=shell_id, extra=_KEEPALIVE_OPTION
        )

    def signal(self, shell_id: str, command_id: str, code: str, timeout_s: int) -> Request:
        body = (
            f'<rsp:Signal CommandId="{escape(command_id)}"><rsp:Code>{escape(code)}</rsp:Code>'
            "</rsp:Signal>"
        )
        return self._build(ACTION_SIGNAL, timeout_s, body, shell_id=shell_id)

    def delete(self, shell_id: str, timeout_s: int) -> Request:
        return self._build(ACTION_DELETE, timeout_s, "", shell_id=shell_id)


# --- replies ---------------------------------------------------------------------------------

_T_RELATES_TO: Final = f"{{{NS_S}}}Header/{{{NS_WSA}}}RelatesTo"
_T_BODY: Final = f"{{{NS_S}}}Body"
_T_SHELL_ID: Final = f"{{{NS_RSP}}}Shell/{{{NS_RSP}}}ShellId"
_T_RECEIVE: Final = f"{{{NS_RSP}}}ReceiveResponse"
_T_STREAM: Final = f"{{{NS_RSP}}}Stream"
_T_STATE: Final = f"{{{NS_RSP}}}CommandState"
_T_FAULT_DETAIL: Final = f"{{{NS_S}}}Fault/{{{NS_S}}}Detail/{{{NS_FAULT}}}WSManFault"
_T_FAULT_REASON: Final = f"{{{NS_S}}}Fault/{{{NS_S}}}Reason/{{{NS_S}}}Text"


def parse_reply(data: bytes, message_id: str) -> ET.Element:
    """The Body of a 200 reply, after checking it relates to the request ``message_id``."""
    root = _parse(data)
    relates = (root.findtext(_T_RELATES_TO) or "").strip()
    if relates.upper() != message_id.upper():
        raise EnvelopeError("the reply does not relate to the request (wsa:RelatesTo)")
    body = root.find(_T_BODY)
    if body is None:
        raise EnvelopeError("the reply has no SOAP body")
    return body


def _parse(data: bytes) -> ET.Element:
    try:
        # the host's reply, over an authenticated (and by default TLS-validated) connection;
        # expat (2.4+) refuses entity-expansion bombs
        return ET.fromstring(data)  # noqa: S314
    except ET.ParseError:
        raise EnvelopeError("the reply is not XML") from None


def created_shell_id(body: ET.Element) -> str:
    """The ShellId of a Create reply."""
    shell_id = (body.findtext(_T_SHELL_ID) or "").strip()
    if not shell_id:
        raise EnvelopeError("the Create reply has no ShellId")
    return shell_id


@dataclass(frozen=True)
class Received:
    """A Receive reply: the PSRP bytes in order, and whether the command reached Done."""

    data: bytes
    done: bool


def received(body: ET.Element) -> Received:
    response = body.find(_T_RECEIVE)
    if response is None:
        raise EnvelopeError("the Receive reply has no ReceiveResponse")
    chunks = []
    for stream in response.iterfind(_T_STREAM):
        text = stream.text
        if text:
            try:
                chunks.append(base64.b64decode(text, validate=True))
            except ValueError:
                raise EnvelopeError("a Receive stream is not base64") from None
    state = response.find(_T_STATE)
    done = state is not None and state.get("State") == COMMAND_DONE
    return Received(b"".join(chunks), done)


def parse_fault(data: bytes) -> WSManFault | None:
    """The WSManFault of an error reply, or None when the body is not a SOAP fault."""
    try:
        root = _parse(data)
    except EnvelopeError:
        return None
    body = root.find(_T_BODY)
    if body is None:
        return None
    detail = body.find(_T_FAULT_DETAIL)
    reason = ""
    code = None
    if detail is not None:
        raw = detail.get("Code")
        if raw is not None and raw.strip().isdigit():
            code = int(raw.strip())
        reason = (detail.findtext(f"{{{NS_FAULT}}}Message") or "").strip()
    if not reason:
        reason = (body.findtext(_T_FAULT_REASON) or "").strip()
    if detail is None and not reason:
        return None
    return WSManFault(code, reason)
