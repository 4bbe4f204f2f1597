"""One PSRP runspace pool (a WinRM shell) of a simulated host, on top of psrpcore's server classes.

Bytes in (fragments from Create, Command and Send), bytes out (fragments for Receive); in between,
each pipeline becomes a ``PipelineRequest`` for the executor once its input has ended, and the
``PipelineResult`` goes back as output, error records, a SetShouldExit host call and a final state.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from psrpcore import (
    CreatePipelineEvent,
    EndOfPipelineInputEvent,
    GetAvailableRunspacesEvent,
    PipelineInputEvent,
    PSRemotingCrypto,
    PSRPCoreError,
    PSRPEvent,
    PSRPPayload,
    ResetRunspaceStateEvent,
    ServerPipeline,
    ServerRunspacePool,
    SetMaxRunspacesEvent,
    SetMinRunspacesEvent,
    StreamType,
)
from psrpcore._payload import PSRPMessage, create_message
from psrpcore.types import (
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    HostMethodIdentifier,
    NETException,
    PipelineState,
    PSDouble,
    PSInvocationState,
    PSObject,
    PSRPMessageType,
    RunspacePoolState,
    serialize,
)

from winsim.api import Command, Executor, PipelineRequest, PipelineResult

log = logging.getLogger(__name__)

# PSRP payload chunk size; a Receive reply carries as many chunks as its envelope size allows
MAX_CHUNK = (153600 - 4096) * 3 // 4
# finished pipelines a client never terminated: keep only the newest few
MAX_FINISHED = 16


class ShellProtocolError(Exception):
    """The client sent something this shell cannot take (bad fragments, unknown pipeline)."""


@dataclass(eq=False)
class _Run:
    pipeline: ServerPipeline
    commands: list[Command] = field(default_factory=list)
    input: list[Any] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    finished: bool = False


class PsrpShell:
    """The server side of one runspace pool. Lives on the server's event loop only."""

    def __init__(self, shell_id: str, host: Any, executor: Executor) -> None:
        self.id = shell_id
        self.broken = False
        self._host = host
        self._executor = executor
        self._pool = _Pool()
        self._runs: dict[uuid.UUID, _Run] = {}
        self._outbox: dict[uuid.UUID | None, deque[bytes]] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        # the last Receive reply per stream, by its MessageID: a client that timed out waiting
        # for it sends the same Receive again and must get the same data (pypsrp does so up to
        # five times, relying on WinRM to answer it again), not the next fragments
        self._replies: dict[uuid.UUID | None, tuple[str, bytes, bool]] = {}

    # --- input ---------------------------------------------------------------------------

    def open(self, creation: bytes) -> None:
        """The creationXml of WS-Management Create: SessionCapability + InitRunspacePool."""
        self._feed(creation, None)
        if self._pool.state != RunspacePoolState.Opened:
            raise ShellProtocolError("the creation data did not open the runspace pool")

    def command(self, command_id: str, data: bytes) -> None:
        """WS-Management Command: a new pipeline and the first fragment of its CreatePipeline."""
        pipeline_id = _uuid(command_id)
        if pipeline_id in self._runs:
            raise ShellProtocolError(f"pipeline {pipeline_id} already exists")
        self._runs[pipeline_id] = _Run(ServerPipeline(self._pool, pipeline_id))
        self._feed(data, pipeline_id)

    def send(self, data: bytes, command_id: str | None) -> None:
        """WS-Management Send (stdin or pr) to the pool or to one pipeline."""
        pipeline_id = _uuid(command_id) if command_id else None
        if pipeline_id is not None and pipeline_id not in self._runs:
            raise ShellProtocolError(f"unknown pipeline {pipeline_id}")
        self._feed(data, pipeline_id)

    def _feed(self, data: bytes, pipeline_id: uuid.UUID | None) -> None:
        try:
            self._pool.receive_data(PSRPPayload(data, StreamType.default, pipeline_id))
            while (event := self._pool.next_event()) is not None:
                self._on_event(event)
        except PSRPCoreError as exc:
            raise ShellProtocolError(str(exc)) from exc
        self._flush()

    def _on_event(self, event: PSRPEvent[Any, Any]) -> None:
        if isinstance(event, _FastCreatePipeline):
            run = self._run_for(event.pipeline_id)
            run.commands = event.commands
            if event.no_input:
                self._start(run)
        elif isinstance(event, CreatePipelineEvent):
            run = self._run_for(event.pipeline_id)
            pipeline = event.pipeline
            run.commands = [_command(c) for c in pipeline.commands]
            if pipeline.no_input:
                self._start(run)
        elif isinstance(event, PipelineInputEvent):
            self._run_for(event.pipeline_id).input.append(to_python(event.data))
        elif isinstance(event, EndOfPipelineInputEvent):
            self._start(self._run_for(event.pipeline_id))
        elif isinstance(
            event, SetMaxRunspacesEvent | SetMinRunspacesEvent | ResetRunspaceStateEvent
        ):
            self._pool.runspace_availability_response(event.ci, True)
        elif isinstance(event, GetAvailableRunspacesEvent):
            self._pool.runspace_availability_response(event.ci, self._pool.max_runspaces)

    def _run_for(self, pipeline_id: uuid.UUID | None) -> _Run:
        run = self._runs.get(pipeline_id) if pipeline_id is not None else None
        if run is None:
            raise ShellProtocolError(f"unknown pipeline {pipeline_id}")
        return run

    # --- running a pipeline --------------------------------------------------------------

    def _start(self, run: _Run) -> None:
        if run.task is None:
            run.task = asyncio.get_running_loop().create_task(self._execute(run))

    async def _execute(self, run: _Run) -> None:
        request = PipelineRequest(commands=run.commands, input=run.input)
        run.input = []  # the request owns the input now (it can be hundreds of KB)
        # Running is not announced to the client (PowerShell does not either)
        run.pipeline._change_state(PSInvocationState.Running, emit=False)
        try:
            result = await self._executor(self._host, request)
        except Exception as exc:
            log.exception("executor failed on shell %s", self.id)
            result = PipelineResult.failure(f"simulated host error: {type(exc).__name__}: {exc}")
        if run.pipeline.pipeline_id in self._runs and not self.broken:
            self._finish(run, result)

    def _finish(self, run: _Run, result: PipelineResult) -> None:
        pipeline = run.pipeline
        for item in result.output:
            pipeline.write_output(_to_ps(item))
        errors = list(result.errors)
        terminating = None
        if result.failed:
            terminating = errors.pop() if errors else "The pipeline failed."
        for message in errors:
            pipeline.write_error(
                _exception(message),
                ErrorCategoryInfo(
                    Category=ErrorCategory.NotSpecified, Reason="WriteErrorException"
                ),
                fully_qualified_error_id="Microsoft.PowerShell.Commands.WriteErrorException",
            )
        if result.exit_code is not None:
            pipeline.host_call(HostMethodIdentifier.SetShouldExit, [result.exit_code])
        if terminating is not None:
            pipeline._change_state(PSInvocationState.Failed, error=_error_record(terminating))
        else:
            self._pool.complete_pipeline(pipeline)
        run.finished = True
        self._flush()
        self._forget_old_runs()

    def _forget_old_runs(self) -> None:
        finished = [
            pid for pid, run in self._runs.items() if run.finished and pid not in self._outbox
        ]
        for pipeline_id in finished[:-MAX_FINISHED]:
            self._drop(pipeline_id)

    # --- output --------------------------------------------------------------------------

    def _flush(self) -> None:
        while (payload := self._pool.data_to_send(MAX_CHUNK)) is not None:
            self._outbox.setdefault(payload.pipeline_id, deque()).append(payload.data)
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def receive(
        self,
        command_id: str | None,
        wait: float,
        limit: int = MAX_CHUNK,
        message_id: str | None = None,
    ) -> tuple[bytes, bool] | None:
        """Wait up to ``wait`` s for output; (data, done) or None when nothing came.

        ``done`` is true once a pipeline reached its final state and every byte went out. A
        Receive sent again with the same ``message_id`` gets the same reply.
        """
        pipeline_id = _uuid(command_id) if command_id else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            replied = self._replies.get(pipeline_id)
            if message_id and replied is not None and replied[0] == message_id:
                return replied[1], replied[2]
            run = self._run_for(pipeline_id) if pipeline_id is not None else None
            data = self._take(pipeline_id, limit)
            done = run is not None and run.finished and not self._outbox.get(pipeline_id)
            if data or done:
                if message_id:
                    self._replies[pipeline_id] = (message_id, data, done)
                return data, done
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)

    def _take(self, pipeline_id: uuid.UUID | None, limit: int) -> bytes:
        chunks = self._outbox.get(pipeline_id)
        if not chunks:
            return b""
        out = bytearray(chunks.popleft())
        while chunks and len(out) + len(chunks[0]) <= limit:
            out += chunks.popleft()
        if not chunks:
            del self._outbox[pipeline_id]
        return bytes(out)

    # --- signals, breakage, close --------------------------------------------------------

    def stop(self, command_id: str) -> None:
        """Ctrl+C: stop a running pipeline; the client forgets it, and so do we."""
        pipeline_id = _uuid(command_id)
        run = self._runs.get(pipeline_id)
        if run is None:
            return
        if run.pipeline.state == PSInvocationState.Running:
            if run.task is not None:
                run.task.cancel()
            run.pipeline.stop()
        self._drop(pipeline_id)

    def terminate(self, command_id: str) -> None:
        """Terminate: the client is done with this pipeline."""
        pipeline_id = _uuid(command_id)
        run = self._runs.get(pipeline_id)
        if run is not None and run.task is not None and not run.task.done():
            run.task.cancel()
        self._drop(pipeline_id)

    def _drop(self, pipeline_id: uuid.UUID) -> None:
        self._runs.pop(pipeline_id, None)
        self._replies.pop(pipeline_id, None)
        self._pool.pipeline_table.pop(pipeline_id, None)
        self._outbox.pop(pipeline_id, None)
        self._wake()

    def set_broken(self, message: str) -> None:
        """Put the pool in the Broken state (told to the client by ``pool_output``)."""
        self.broken = True
        if self._pool.state == RunspacePoolState.Opened:
            self._pool.set_broken(_error_record(message))
            self._flush()

    def pool_output(self) -> bytes:
        """Everything queued for the pool itself (not for a pipeline)."""
        return self._take(None, limit=1 << 30)

    def close(self) -> list[asyncio.Task[None]]:
        """Forget every pipeline; returns the tasks still running (cancelled) to be awaited."""
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        self._runs.clear()
        self._outbox.clear()
        self._replies.clear()
        self._wake()
        return tasks


# --- a fast reader for CreatePipeline --------------------------------------------------------
# psrpcore's generic CLIXML deserializer takes about 3 ms for one CreatePipeline (most of the CPU a
# poll costs the simulator). This reads the shape PSRP clients send; anything else (references,
# custom objects, rare types) falls back to psrpcore.


class _Unsupported(Exception):
    pass


class _FastCreatePipeline(PSRPEvent[None, uuid.UUID]):
    def __init__(self, rpid: uuid.UUID, pid: uuid.UUID, commands: list[Command], no_input: bool):
        super().__init__(PSRPMessageType.CreatePipeline, None, rpid, pid)
        self.commands = commands
        self.no_input = no_input


class _Pool(ServerRunspacePool):
    def complete_pipeline(self, pipeline: ServerPipeline) -> None:
        """``pipeline.complete()`` with the PipelineState message serialized once per process
        (psrpcore takes ~0.4 ms to serialize it each time)."""
        pipeline._change_state(PSInvocationState.Completed, emit=False)
        message_type = PSRPMessageType.PipelineState
        pid = pipeline.pipeline_id
        raw = create_message(False, message_type, _COMPLETED, self.runspace_pool_id, pid)
        self._send_buffer.append(
            PSRPMessage(
                message_type, bytearray(raw), self.runspace_pool_id, pid, self._fragment_counter
            )
        )

    def _process_message(self, message: Any) -> PSRPEvent[Any, Any]:
        pid = message.pipeline_id
        if message.message_type == PSRPMessageType.CreatePipeline and pid in self.pipeline_table:
            try:
                no_input, commands = read_create_pipeline(bytes(message.data))
            except (_Unsupported, ET.ParseError, KeyError, ValueError, AttributeError, TypeError):
                log.debug("CreatePipeline outside the fast reader's subset", exc_info=True)
            else:
                return _FastCreatePipeline(message.runspace_pool_id, pid, commands, no_input)
        return super()._process_message(message)


_COMPLETED = ET.tostring(
    serialize(PipelineState(PipelineState=int(PSInvocationState.Completed)), PSRemotingCrypto())
)


def read_create_pipeline(data: bytes) -> tuple[bool, list[Command]]:
    """(NoInput, commands) of a CreatePipeline message's CLIXML; _Unsupported when unsure."""
    root = ET.fromstring(data)  # noqa: S314 - PSRP data from a loopback test client
    # object references (<Ref>): psrpcore's client writes the Merge* members it shares as
    # references; a <Ref> where this reader needs a value fails it (_value, _members, _list)
    props = _members(root)
    pipeline = _members(props["PowerShell"])
    extra = pipeline.get("ExtraCmds")
    if extra is not None and extra.tag == "Obj":
        statements = [_members(s)["Cmds"] for s in _list(extra)]
    else:
        statements = [pipeline["Cmds"]]
    commands = []
    for cmds in statements:
        for raw in _list(cmds):
            cmd = _members(raw)
            parameters: list[tuple[str | None, Any]] = []
            for arg in _list(cmd["Args"]):
                pair = _members(arg)
                name = _value(pair["N"])
                value = _value(pair["V"]) if "V" in pair else None
                parameters.append((str(name) if name is not None else None, value))
            commands.append(
                Command(str(_value(cmd["Cmd"])), _value(cmd["IsScript"]) is True, parameters)
            )
    return _value(props["NoInput"]) is True, commands


def _members(obj: ET.Element) -> dict[str, ET.Element]:
    ms = obj.find("MS")
    if ms is None:
        raise _Unsupported("no member set")
    return {child.get("N", ""): child for child in ms}


def _list(obj: ET.Element) -> list[ET.Element]:
    for tag in ("LST", "IE", "STK", "QUE"):
        items = obj.find(tag)
        if items is not None:
            return list(items)
    raise _Unsupported("not a list")


_INTS = frozenset({"I32", "I64", "I16", "U16", "U32", "U64", "By", "SB"})
_FLOATS = frozenset({"Db", "Sg", "D"})
_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def _value(el: ET.Element) -> Any:
    tag, text = el.tag, el.text or ""
    if tag == "S":
        return _unescape(text)
    if tag == "Nil":
        return None
    if tag == "B":
        return text.strip() == "true"
    if tag in _INTS:
        return int(text)
    if tag in _FLOATS:
        return float(text)
    if tag == "Obj" and el.find("MS") is None and el.find("Props") is None:
        entries = el.find("DCT")
        if entries is not None:
            pairs = ({c.get("N"): c for c in en} for en in entries)
            return {_value(p["Key"]): _value(p["Value"]) for p in pairs}
        return [_value(item) for item in _list(el)]
    raise _Unsupported(tag)


def _unescape(text: str) -> str:
    """CLIXML strings escape control characters and UTF-16 surrogates as _xHHHH_."""
    if "_x" not in text:
        return text
    raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


# --- conversions ---------------------------------------------------------------------------


def to_python(value: Any) -> Any:
    """A deserialized CLIXML value as plain Python (str, int, float, bool, None, bytes, list,
    dict); any other object becomes a dict of its properties, or its string form."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, dict):
        return {to_python(k): to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    if isinstance(value, PSObject):
        meta = value.PSObject
        props = [*meta.adapted_properties, *meta.extended_properties]
        if props:
            return {p.name: to_python(p.get_value(value)) for p in props}
    return str(value)


def _to_ps(value: Any) -> Any:
    """Python floats are doubles: without this psrpcore sends them as Single."""
    if isinstance(value, float) and not isinstance(value, PSObject):
        return PSDouble(value)
    if isinstance(value, dict) and not isinstance(value, PSObject):
        return {k: _to_ps(v) for k, v in value.items()}
    if isinstance(value, list) and not isinstance(value, PSObject):
        return [_to_ps(v) for v in value]
    return value


def _command(raw: Any) -> Command:
    return Command(
        text=str(raw.command_text),
        is_script=bool(raw.is_script),
        parameters=[
            (str(name) if name is not None else None, to_python(v)) for name, v in raw.parameters
        ],
    )


def _exception(message: str) -> NETException:
    return NETException(Message=message)


def _error_record(message: str) -> ErrorRecord:
    return ErrorRecord(
        Exception=_exception(message),
        CategoryInfo=ErrorCategoryInfo(
            Category=ErrorCategory.OperationStopped, Reason="RuntimeException"
        ),
        FullyQualifiedErrorId="RuntimeException",
    )


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise ShellProtocolError(f"not a pipeline id: {text!r}") from exc
