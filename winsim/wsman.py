"""The WS-Management (MS-WSMV) side of a simulated host: SOAP in, SOAP out, one host's shells.

Only what PSRP clients use: Create, Command, Send, Receive (long-polled up to the request's
OperationTimeout), Signal, Get and Delete. Every reply carries ``wsa:RelatesTo`` = the request's
MessageID (pypsrp checks it); every failure is HTTP 500 with a ``WSManFault Code=``.
Replies are built as text: far cheaper than building element trees for each request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from winsim.api import Executor
from winsim.psrp_session import PsrpShell, ShellProtocolError

log = logging.getLogger(__name__)

NS_S = "http://www.w3.org/2003/05/soap-envelope"
NS_WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_WST = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
NS_RSP = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
NS_FAULT = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
NS_CFG = "http://schemas.microsoft.com/wbem/wsman/1/config"
NS_PWSH = "http://schemas.microsoft.com/powershell"

ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
COMMAND_DONE = f"{NS_RSP}/CommandState/Done"
COMMAND_RUNNING = f"{NS_RSP}/CommandState/Running"

# WSManFault codes (MS-WSMV / winerror.h) the clients act on
ERROR_OPERATION_TIMEDOUT = 0x80338029  # pypsrp retries a Receive on it
ERROR_SHELL_NOT_FOUND = 0x8033805B  # unknown ShellId
ERROR_INVALID_PARAMETER = 0x80070057
ERROR_NOT_SUPPORTED = 0x80004001
# "This user is allowed a maximum number of N concurrent shells, which has been exceeded."
ERROR_QUOTA_MAX_SHELLS = 0x803381A6

_T_ACTION = f"{{{NS_WSA}}}Action"
_T_MESSAGE_ID = f"{{{NS_WSA}}}MessageID"
_T_RESOURCE_URI = f"{{{NS_WSMAN}}}ResourceURI"
_T_TIMEOUT = f"{{{NS_WSMAN}}}OperationTimeout"
_T_MAX_ENVELOPE = f"{{{NS_WSMAN}}}MaxEnvelopeSize"
_T_SELECTOR = f"{{{NS_WSMAN}}}SelectorSet/{{{NS_WSMAN}}}Selector"
_T_HEADER = f"{{{NS_S}}}Header"
_T_BODY = f"{{{NS_S}}}Body"
_DURATION = re.compile(r"^PT(?:(\d+(?:\.\d*)?)M)?(?:(\d+(?:\.\d*)?)S)?$")


class WSManError(Exception):
    """A request that ends in a WSMan fault (HTTP 500)."""

    def __init__(self, code: int, message: str, subcode: str = "w:InternalError") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.subcode = subcode


@dataclass(frozen=True)
class WSManRequest:
    action_uri: str
    message_id: str
    resource_uri: str
    shell_id: str | None
    operation_timeout: float | None
    max_envelope: int | None
    body: ET.Element | None = field(compare=False)

    @property
    def action(self) -> str:
        """The short action name: Create, Command, Send, Receive, Signal, Get, Delete, ..."""
        return self.action_uri.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class WSManReply:
    status: int
    body: bytes
    content_type: str = "application/soap+xml;charset=UTF-8"


def parse_request(data: bytes) -> WSManRequest:
    """The parts of a SOAP envelope the simulator needs; WSManError when it is not one."""
    try:
        # loopback test traffic only; expat (2.4+) already refuses entity-expansion bombs
        root = ET.fromstring(data)  # noqa: S314
    except ET.ParseError as exc:
        raise WSManError(ERROR_INVALID_PARAMETER, f"malformed XML: {exc}") from exc
    header = root.find(_T_HEADER)
    if header is None:
        raise WSManError(ERROR_INVALID_PARAMETER, "no SOAP header")
    action = header.findtext(_T_ACTION)
    message_id = header.findtext(_T_MESSAGE_ID)
    if not action or not message_id:
        raise WSManError(ERROR_INVALID_PARAMETER, "no wsa:Action or wsa:MessageID")
    shell_id = None
    for selector in header.iterfind(_T_SELECTOR):
        if selector.get("Name") == "ShellId":
            shell_id = (selector.text or "").strip() or None
    body = root.find(_T_BODY)
    max_envelope = header.findtext(_T_MAX_ENVELOPE)
    return WSManRequest(
        action_uri=action.strip(),
        message_id=message_id.strip(),
        resource_uri=(header.findtext(_T_RESOURCE_URI) or "").strip(),
        shell_id=shell_id,
        operation_timeout=_seconds(header.findtext(_T_TIMEOUT)),
        max_envelope=int(max_envelope) if max_envelope and max_envelope.isdigit() else None,
        body=body[0] if body is not None and len(body) else None,
    )


def _seconds(text: str | None) -> float | None:
    match = _DURATION.match(text.strip()) if text else None
    if match is None:
        return None
    minutes, seconds = match.groups()
    return float(minutes or 0) * 60 + float(seconds or 0)


def envelope(action_uri: str, relates_to: str, body: str) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{NS_S}" xmlns:a="{NS_WSA}" xmlns:w="{NS_WSMAN}" '
        f'xmlns:x="{NS_WST}" xmlns:rsp="{NS_RSP}"><s:Header>'
        f"<a:Action>{escape(action_uri)}</a:Action>"
        f"<a:MessageID>uuid:{uuid.uuid4()}</a:MessageID><a:To>{ANONYMOUS}</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault_envelope(relates_to: str, code: int, message: str, machine: str, subcode: str) -> bytes:
    body = (
        "<s:Fault><s:Code><s:Value>s:Receiver</s:Value>"
        f"<s:Subcode><s:Value>{escape(subcode)}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(message)}</s:Text></s:Reason>'
        f'<s:Detail><f:WSManFault xmlns:f="{NS_FAULT}" Code="{code}" Machine={quoteattr(machine)}>'
        f"<f:Message>{escape(message)}</f:Message></f:WSManFault></s:Detail></s:Fault>"
    )
    return envelope(f"{NS_WSA}/fault", relates_to, body)


class WSManService:
    """The shells of one simulated host and what each WS-Management action does to them."""

    def __init__(self, host: Any, executor: Executor, *, machine: str, owner: str) -> None:
        self.host = host
        self.machine = machine
        self._owner = owner
        self._executor = executor
        self._shells: dict[str, PsrpShell] = {}
        # per shell: its idle timeout, when a request last touched it, requests in progress
        self._life: dict[str, _ShellLife] = {}

    @property
    def open_shells(self) -> int:
        return len(self._shells)

    def _quota(self, name: str, default: float) -> float:
        return float(getattr(self.host, name, default))

    def reap_idle(self) -> int:
        """Close the shells idle past their timeout, as WinRM does; returns how many. On the
        server's loop (the SimServer sweeps every second, and before each request).

        Idle time counts from the end of the last request on the shell: a parked Receive keeps
        it alive, a running pipeline alone does not (MS-WSMV 2.2.4.42)."""
        now = time.monotonic()
        idle = [
            shell_id
            for shell_id, life in self._life.items()
            if life.busy == 0 and now - life.last > life.idle_s
        ]
        for shell_id in idle:
            log.info(
                "%s: shell %s idle for %.0f s: closed",
                self.machine,
                shell_id,
                now - self._life[shell_id].last,
            )
            self.forget_shell(shell_id)
        return len(idle)

    def shell_ids(self) -> list[str]:
        return list(self._shells)

    def idle_timeouts(self) -> list[float]:
        """The idle timeout (s) each open shell was given at its Create."""
        return [life.idle_s for life in self._life.values()]

    def fault(self, req_message_id: str, error: WSManError) -> WSManReply:
        body = fault_envelope(
            req_message_id, error.code, error.message, self.machine, error.subcode
        )
        return WSManReply(500, body)

    async def handle(self, req: WSManRequest, *, client_ip: str = "") -> WSManReply:
        self.reap_idle()
        life = self._life.get((req.shell_id or "").upper())
        if life is not None:
            life.busy += 1
        try:
            return await self._handle(req, client_ip)
        finally:
            if life is not None:
                life.busy -= 1
                life.last = time.monotonic()

    async def _handle(self, req: WSManRequest, client_ip: str) -> WSManReply:
        try:
            handler = _HANDLERS.get(req.action)
            if handler is None:
                raise WSManError(ERROR_NOT_SUPPORTED, f"unsupported action {req.action_uri}")
            body = await handler(self, req, client_ip)
        except WSManError as exc:
            return self.fault(req.message_id, exc)
        except ShellProtocolError as exc:
            return self.fault(req.message_id, WSManError(ERROR_INVALID_PARAMETER, str(exc)))
        return WSManReply(200, envelope(req.action_uri + "Response", req.message_id, body))

    # --- shells kept across requests -----------------------------------------------------

    def _shell(self, req: WSManRequest) -> PsrpShell:
        shell = self._shells.get(req.shell_id or "")
        if shell is None:
            raise WSManError(
                ERROR_SHELL_NOT_FOUND,
                f"The request for the Windows Remote Shell with ShellId {req.shell_id} failed "
                "because the shell was not found on the server. Possible causes are: the "
                "specified ShellId is incorrect or the shell no longer exists on the server.",
                "w:InvalidSelectors",
            )
        return shell

    def forget_shell(self, shell_id: str) -> list[asyncio.Task[None]]:
        """Drop a shell as if the host lost it (the client is not told)."""
        shell = self._shells.pop(shell_id.upper(), None)
        self._life.pop(shell_id.upper(), None)
        return shell.close() if shell is not None else []

    def break_shell(self, shell_id: str) -> None:
        """Put the pool in the Broken state; its next Receive tells the client, then it is gone."""
        shell = self._shells.get(shell_id.upper())
        if shell is not None and not shell.broken:
            shell.set_broken("The runspace pool is broken (simulated fault).")

    def close_all(self) -> list[asyncio.Task[None]]:
        tasks: list[asyncio.Task[None]] = []
        for shell in self._shells.values():
            tasks.extend(shell.close())
        self._shells.clear()
        self._life.clear()
        return tasks

    # --- actions -------------------------------------------------------------------------

    async def _create(self, req: WSManRequest, client_ip: str) -> str:
        shell_el = _require(req, f"{{{NS_RSP}}}Shell")
        creation = shell_el.findtext(f"{{{NS_PWSH}}}creationXml")
        if not creation:
            raise WSManError(ERROR_INVALID_PARAMETER, "only PowerShell shells (creationXml)")
        shell_id = (shell_el.get("ShellId") or str(uuid.uuid4())).upper()
        if shell_id in self._shells:
            raise WSManError(ERROR_INVALID_PARAMETER, f"shell {shell_id} already exists")
        limit = int(self._quota("max_shells_per_user", 30))
        if limit and len(self._shells) >= limit:
            raise WSManError(
                ERROR_QUOTA_MAX_SHELLS,
                "The WS-Management service cannot process the request. This user is allowed a "
                f"maximum number of {limit} concurrent shells, which has been exceeded. Close "
                "existing shells or raise the quota for this user.",
                "w:QuotaLimit",
            )
        asked = _seconds(shell_el.findtext(f"{{{NS_RSP}}}IdleTimeOut"))
        idle_s = min(
            max(asked if asked is not None else 7200.0, self._quota("min_idle_timeout_s", 60.0)),
            self._quota("max_idle_timeout_s", 7200.0),
        )
        shell = PsrpShell(shell_id, self.host, self._executor)
        shell.open(_b64(creation))
        self._shells[shell_id] = shell
        self._life[shell_id] = _ShellLife(idle_s, time.monotonic())
        resource = escape(req.resource_uri)
        return (
            f"<x:ResourceCreated><a:Address>{ANONYMOUS}</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{resource}</w:ResourceURI><w:SelectorSet>"
            f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
            f"</a:ReferenceParameters></x:ResourceCreated>"
            f"<rsp:Shell><rsp:ShellId>{shell_id}</rsp:ShellId>"
            f"<rsp:ResourceUri>{resource}</rsp:ResourceUri>"
            f"<rsp:Owner>{escape(self._owner)}</rsp:Owner>"
            f"<rsp:ClientIP>{escape(client_ip)}</rsp:ClientIP>"
            f"<rsp:IdleTimeOut>PT{idle_s:.3f}S</rsp:IdleTimeOut>"
            "<rsp:InputStreams>stdin pr</rsp:InputStreams>"
            "<rsp:OutputStreams>stdout</rsp:OutputStreams></rsp:Shell>"
        )

    async def _command(self, req: WSManRequest, client_ip: str) -> str:
        shell = self._shell(req)
        line = _require(req, f"{{{NS_RSP}}}CommandLine")
        command_id = (line.get("CommandId") or "").upper()
        if not command_id:
            raise WSManError(ERROR_INVALID_PARAMETER, "a PSRP Command needs a CommandId")
        shell.command(command_id, _b64(line.findtext(f"{{{NS_RSP}}}Arguments") or ""))
        return (
            f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId>"
            "</rsp:CommandResponse>"
        )

    async def _send(self, req: WSManRequest, client_ip: str) -> str:
        shell = self._shell(req)
        send = _require(req, f"{{{NS_RSP}}}Send")
        for stream in send.iterfind(f"{{{NS_RSP}}}Stream"):
            shell.send(_b64(stream.text or ""), stream.get("CommandId"))
        return "<rsp:SendResponse/>"

    async def _receive(self, req: WSManRequest, client_ip: str) -> str:
        shell = self._shell(req)
        desired = _require(req, f"{{{NS_RSP}}}Receive").find(f"{{{NS_RSP}}}DesiredStream")
        command_id = desired.get("CommandId") if desired is not None else None
        attr = f' CommandId="{escape(command_id)}"' if command_id else ""
        if shell.broken:
            data = shell.pool_output()
            self.forget_shell(shell.id)
            return _receive_body(data, attr, COMMAND_DONE if command_id else None)
        timeout = req.operation_timeout if req.operation_timeout is not None else 20.0
        # an OperationTimeout above MaxTimeoutms is capped to it, not refused (MS-WSMV 3.1.4.1.6)
        timeout = min(timeout, self._quota("max_timeout_s", 60.0))
        # what fits in the client's MaxEnvelopeSize once base64-encoded, less the SOAP around it
        limit = (req.max_envelope or 153600) * 3 // 4 - 4096
        got = await shell.receive(command_id, max(timeout - 0.25, 0.0), limit, req.message_id)
        if got is None:
            raise WSManError(
                ERROR_OPERATION_TIMEDOUT,
                "The WS-Management service cannot complete the operation within the time "
                "specified in OperationTimeout.",
                "w:TimedOut",
            )
        data, done = got
        state = (COMMAND_DONE if done else COMMAND_RUNNING) if command_id else None
        return _receive_body(data, attr, state)

    async def _signal(self, req: WSManRequest, client_ip: str) -> str:
        shell = self._shell(req)
        signal = _require(req, f"{{{NS_RSP}}}Signal")
        command_id = signal.get("CommandId") or ""
        code = (signal.findtext(f"{{{NS_RSP}}}Code") or "").strip()
        if code.lower().endswith("ctrl_c"):
            shell.stop(command_id)
        else:
            shell.terminate(command_id)
        return "<rsp:SignalResponse/>"

    async def _get(self, req: WSManRequest, client_ip: str) -> str:
        if req.resource_uri.rstrip("/").endswith("/config"):
            return (
                f'<cfg:Config xmlns:cfg="{NS_CFG}">'
                "<cfg:MaxEnvelopeSizekb>500</cfg:MaxEnvelopeSizekb></cfg:Config>"
            )
        shell = self._shell(req)
        return (
            f"<rsp:Shell><rsp:ShellId>{shell.id}</rsp:ShellId>"
            f"<rsp:Owner>{escape(self._owner)}</rsp:Owner>"
            "<rsp:State>Connected</rsp:State></rsp:Shell>"
        )

    async def _delete(self, req: WSManRequest, client_ip: str) -> str:
        shell = self._shell(req)
        for task in self.forget_shell(shell.id):
            await asyncio.gather(task, return_exceptions=True)
        return ""


@dataclass
class _ShellLife:
    idle_s: float
    last: float
    busy: int = 0


def _receive_body(data: bytes, attr: str, state: str | None) -> str:
    parts = ["<rsp:ReceiveResponse>"]
    if data:
        parts.append(
            f'<rsp:Stream Name="stdout"{attr}>{base64.b64encode(data).decode()}</rsp:Stream>'
        )
    if state is not None:
        parts.append(f'<rsp:CommandState{attr} State="{state}"/>')
    parts.append("</rsp:ReceiveResponse>")
    return "".join(parts)


def _require(req: WSManRequest, tag: str) -> ET.Element:
    if req.body is None or req.body.tag != tag:
        raise WSManError(ERROR_INVALID_PARAMETER, f"{req.action} needs a {tag} body")
    return req.body


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise WSManError(ERROR_INVALID_PARAMETER, f"bad base64 data: {exc}") from exc


_HANDLERS = {
    "Create": WSManService._create,
    "Command": WSManService._command,
    "Send": WSManService._send,
    "Receive": WSManService._receive,
    "Signal": WSManService._signal,
    "Get": WSManService._get,
    "Delete": WSManService._delete,
}
