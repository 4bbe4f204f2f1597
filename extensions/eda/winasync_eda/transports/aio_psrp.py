"""The asyncio PSRP backend of watch mode: no thread per host, one event loop for every host.

pypsrp 0.9 blocks, so each parked Receive held a thread, and 2,000 of them made runnable at once
starved the source (README, "Where watch mode misses"). Here a parked Receive is a coroutine
awaiting an aiohttp response: the PSRP messages come from psrpcore (sans-IO: the same library
the simulated host runs on), the WS-Management envelopes from ``wsman_envelope``, the HTTP from
``aio_http``. What goes over the wire (the poll script, its parameters, its answer) is
``poll_wire``, exactly as for ``psrp.PsrpTransport``; failures are told by ``psrp_common`` in
the same kinds, so the scheduler cannot tell the two backends apart.

One runspace pool (a WinRM shell) per host, one runspace in it; the poll script is defined in it
once as a function (or run by path with ``poll_script``). A pool that failed in any way, or
whose poll was cancelled mid-pipeline, is deleted (best effort) and a new one opened by the
next poll; shells whose Delete failed are deleted once the host answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from xml.etree import ElementTree as ET

from psrpcore import (
    ClientPowerShell,
    ErrorRecordEvent,
    PipelineOutputEvent,
    PipelineStateEvent,
    PSRPCoreError,
    PSRPPayload,
    RunspacePoolStateEvent,
    StreamType,
)
from psrpcore.types import PSInvocationState, RunspacePoolState

from ..settings import HostSettings
from .aio_http import Endpoint, HttpClient, HttpFailure, Reply
from .aio_negotiate import (
    NEGOTIATE_AUTHS,
    Channel,
    ChannelError,
    LogonError,
    LogonRefused,
    SealError,
)
from .base import AuthenticationFailed, PollRequest, Snapshot, TransportError
from .poll_wire import DEFINE_SCRIPT, FUNCTION, BadAnswerError, parse_answer
from .psrp_common import (
    ClosedError,
    DeadlineError,
    PipelineFailedError,
    PsrpTransportCore,
    first_error,
    transport_error,
)
from .psrp_fast import FastRunspacePool, template
from .wsman_envelope import (
    ERROR_OPERATION_TIMEDOUT,
    MAX_ENVELOPE,
    SIGNAL_TERMINATE,
    EnvelopeError,
    Request,
    ShellEnvelopes,
    WSManFault,
    created_shell_id,
    parse_fault,
    parse_reply,
    received,
)

LOGGER = logging.getLogger(__name__)

# PSRP bytes per request: what fits in MaxEnvelopeSize once base64-encoded, less the SOAP
_FRAGMENT_BYTES: Final = (MAX_ENVELOPE - 4096) * 3 // 4
_MAX_ABANDONED: Final = 64
# a Delete or Signal after a failure or on close: short, the host may be the failure
_CLEANUP_TIMEOUT_S: Final = 5.0
_FINAL_STATES: Final = frozenset(
    {PSInvocationState.Completed, PSInvocationState.Failed, PSInvocationState.Stopped}
)


class _AuthError(Exception):
    """HTTP 401: the host refused the credentials."""


class _NegotiateError(Exception):
    """The security library could not log on (no Kerberos ticket, no KDC...)."""


class _StatusError(Exception):
    """An HTTP status other than 200, 401, or a 500 carrying a WSManFault."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


class _FaultError(Exception):
    def __init__(self, fault: WSManFault) -> None:
        super().__init__(f"code {fault.code}: {fault.reason}")
        self.fault = fault


class _PoolError(Exception):
    """The runspace pool did not open, or broke."""


@dataclass(eq=False)
class _Pool:
    """One open runspace pool: psrpcore's state machine and the shell that carries it."""

    psrp: FastRunspacePool
    shell_id: str
    defined: bool = False


class AioPsrpTransport(PsrpTransportCore):
    """A host polled over PSRP from the event loop; implements ``Transport``."""

    def __init__(
        self,
        settings: HostSettings,
        call_deadline_s: float,
        http: HttpClient,
        *,
        poll_script: str | None = None,
        idle_timeout: int | None = None,
    ) -> None:
        super().__init__(
            settings, call_deadline_s, poll_script=poll_script, idle_timeout=idle_timeout
        )
        self._http = http
        self._endpoint: Endpoint | None = None
        # negotiate, ntlm, kerberos: the poll's own logged-on connection (Deletes aside take
        # one each, closed after them)
        self._channel: Channel | None = None
        self._envelopes = ShellEnvelopes("")
        self._pool: _Pool | None = None
        # shells a failed pool left open on the host: deleted once the host answers again
        self._abandoned: set[str] = set()
        # Deletes under way for pools given up by a cancelled poll (close() waits for them)
        self._cleanups: set[asyncio.Task[None]] = set()
        # the deadline of the poll under way: close() brings it forward to end that poll
        self._poll_scope: asyncio.Timeout | None = None
        # shells whose Delete is under way (still open on the host until it answers)
        self._deleting: set[str] = set()

    def _target(self) -> Endpoint:
        if self._endpoint is None:
            # built on first use: it reads the CA bundle, off the start-up path of 2,000 hosts
            self._endpoint = self._http.endpoint(self.settings)
            self._envelopes = ShellEnvelopes(self._endpoint.url)
        return self._endpoint

    # ---- the Transport protocol ----

    async def poll(self, request: PollRequest) -> Snapshot:
        parameters, deadline, park = self._start_poll(request)
        async with self._lock:
            error: Exception = DeadlineError("no answer within the call deadline")
            try:
                async with asyncio.timeout_at(_loop_time(deadline)) as scope:
                    self._poll_scope = scope
                    return await self._invoke(parameters, deadline, park)
            except TimeoutError:
                if self._closed:  # the deadline above, brought forward by close()
                    error = ClosedError("the transport was closed during the poll")
            except asyncio.CancelledError:
                # a pipeline may be running (a parked Receive): the pool cannot take another
                # one, so it goes, and its Delete ends the pipeline on the host
                self._give_up_pool()
                raise
            except Exception as exc:  # every failure becomes a TransportError
                error = exc
            finally:
                self._poll_scope = None
                if self._closed:
                    # close() ran while this poll held the connection
                    self._close_channel()
            translated = self._translate(error)
            if isinstance(translated, AuthenticationFailed):
                # a Delete would carry the refused credentials again (lockout policies count
                # each refused logon): the shell is deleted once the host lets the source in
                self._forget_pool()
            else:
                await self._discard_pool()
        # raised outside the except block: no chained cause or context carries the original
        raise translated

    async def close(self) -> None:
        """Delete the shell (ending a waiting pipeline); idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        LOGGER.debug("%s: closing the PSRP runspace pool", self.settings.name)
        # not under the lock: a poll may be parked on the pool for a minute. The Delete ends
        # its pipeline on the host; the poll itself ends now, as closed, whatever it waits for:
        # its Receive, a Create, or a logon (a Delete aside logs on too, and pyspnego may wait
        # seconds for a KDC before it even connects)
        self._give_up_pool()
        self._end_poll()
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        if not self.busy:
            self._close_channel()

    def _end_poll(self) -> None:
        """Bring the deadline of the poll under way forward to now: it fails as closed."""
        scope = self._poll_scope
        if scope is not None and not scope.expired():
            scope.reschedule(asyncio.get_running_loop().time())

    @property
    def channel(self) -> Channel | None:
        """The poll's logged-on connection (negotiate, ntlm, kerberos), once it has one."""
        return self._channel

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    # ---- one poll ----

    async def _invoke(self, parameters: Mapping[str, str], deadline: float, park: bool) -> Snapshot:
        pool = await self._open_pool(deadline)
        ps = ClientPowerShell(pool.psrp)
        # the command and its parameters (in PARAMETER_NAMES order), serialized from a template
        command = template(self.poll_script or FUNCTION, tuple(parameters))
        pool.psrp.start_prepared(ps, command.render(parameters))
        output = await self._run(pool, ps, deadline, park=park)
        snapshot = parse_answer(output)
        try:
            await self._terminate(pool, ps)
        except Exception as exc:
            self._debug_failure("closing the pipeline", exc)
            await self._discard_pool()
        if self._abandoned:
            await self._delete_abandoned()
        return snapshot

    async def _open_pool(self, deadline: float) -> _Pool:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise ClosedError("the transport is closed")
        LOGGER.debug("%s: opening a PSRP runspace pool", self.settings.name)
        self._target()
        if self._inherited:
            await self._delete_inherited()
        envelopes = self._envelopes
        # one runspace: the function defined below lives in it, so every pipeline finds it
        psrp = FastRunspacePool(min_runspaces=1, max_runspaces=1)
        psrp.open()
        payload = psrp.data_to_send()
        assert payload is not None  # open() queued SessionCapability and InitRunspacePool
        shell_id = str(psrp.runspace_pool_id).upper()
        body = await self._call(
            envelopes.create(shell_id, payload.data, self.idle_timeout, self._op_timeout())
        )
        pool = _Pool(psrp, created_shell_id(body))
        self._pool = pool
        self._shells_changed()  # recorded now: a kill during the first wait would lose it
        # the host answers with its capability, its data and the pool's state: Opened, or
        # Broken (_events raises); the deadline bounds a host that says nothing
        while psrp.state != RunspacePoolState.Opened:
            got = await self._receive(pool, None, self._op_timeout(deadline))
            if got is not None:
                self._events(pool, got[0], None)
        if not self.poll_script:
            define = ClientPowerShell(pool.psrp)
            define.add_script(DEFINE_SCRIPT, use_local_scope=True)
            await self._run(pool, define, deadline)
            await self._terminate(pool, define)  # a failure fails the poll: the pool goes
        return pool

    async def _run(
        self, pool: _Pool, ps: ClientPowerShell, deadline: float, *, park: bool = False
    ) -> list[object]:
        """Start a pipeline and receive until it ends; its output, or an exception.

        ``park``: a waiting poll, whose Receive waits on the host with the configured
        OperationTimeout (above the wait; ``hosts._watch_timeouts``)."""
        if ps.state == PSInvocationState.NotStarted:
            ps.start()
        command_id = str(ps.pipeline_id).upper()
        first = pool.psrp.data_to_send(_FRAGMENT_BYTES)
        assert first is not None  # start() queued CreatePipeline
        await self._call(
            self._envelopes.command(pool.shell_id, command_id, first.data, self._op_timeout())
        )
        while (more := pool.psrp.data_to_send(_FRAGMENT_BYTES)) is not None:
            target = command_id if more.pipeline_id is not None else None
            await self._call(
                self._envelopes.send(pool.shell_id, target, more.data, self._op_timeout())
            )
        output: list[object] = []
        errors: list[str] = []
        state: PSInvocationState | None = None
        while state not in _FINAL_STATES:
            timeout = self._op_timeout() if park else self._op_timeout(deadline)
            got = await self._receive(pool, command_id, timeout)
            if got is None:
                continue
            for event in self._events(pool, got[0], ps):
                if isinstance(event, PipelineOutputEvent):
                    output.append(event.data)
                elif isinstance(event, ErrorRecordEvent):
                    errors.append(_record_text(event.record))
                elif isinstance(event, PipelineStateEvent):
                    state = event.state
                    if event.reason is not None:
                        errors.append(_record_text(event.reason))
            if got[1] and state not in _FINAL_STATES:
                raise _PoolError("the pipeline ended without a final state")
        with contextlib.suppress(PSRPCoreError):
            ps.close()
        if state != PSInvocationState.Completed or errors:
            raise PipelineFailedError(first_error(errors, state))
        return output

    def _events(self, pool: _Pool, data: bytes, ps: ClientPowerShell | None) -> list[Any]:
        pipeline_id = ps.pipeline_id if ps is not None else None
        pool.psrp.receive_data(PSRPPayload(data, StreamType.default, pipeline_id))
        events = []
        while (event := pool.psrp.next_event()) is not None:
            if isinstance(event, RunspacePoolStateEvent) and event.state in (
                RunspacePoolState.Broken,
                RunspacePoolState.Closed,
            ):
                raise _PoolError(f"the runspace pool is {event.state.name}")
            events.append(event)
        return events

    async def _receive(
        self, pool: _Pool, command_id: str | None, op_timeout: int
    ) -> tuple[bytes, bool] | None:
        """One Receive: (PSRP bytes, command done), or None when the OperationTimeout ran out."""
        request = self._envelopes.receive(pool.shell_id, command_id, op_timeout)
        try:
            body = await self._call(request, read_timeout=self._read_timeout(op_timeout))
        except _FaultError as exc:
            if exc.fault.code == ERROR_OPERATION_TIMEDOUT:
                return None
            raise
        got = received(body)
        return got.data, got.done

    async def _terminate(self, pool: _Pool, ps: ClientPowerShell) -> None:
        """End a finished pipeline on the host, which counts the open commands of each user."""
        command_id = str(ps.pipeline_id).upper()
        await self._call(
            self._envelopes.signal(pool.shell_id, command_id, SIGNAL_TERMINATE, self._op_timeout())
        )

    # ---- WS-Management requests ----

    async def _call(
        self, request: Request, *, read_timeout: float | None = None, last: bool = False
    ) -> ET.Element:
        endpoint = self._target()
        timeout = read_timeout if read_timeout is not None else endpoint.read_timeout
        if self.settings.auth in NEGOTIATE_AUTHS:
            reply = await self._post_negotiated(endpoint, request.body, timeout, last=last)
        else:
            reply = await self._http.post(endpoint, request.body, timeout, last=last)
        if reply.status == 200:
            return parse_reply(reply.body, request.message_id)
        if reply.status == 401:
            raise _AuthError("the host refused the credentials")
        fault = parse_fault(reply.body) if reply.status == 500 else None
        if fault is not None:
            raise _FaultError(fault)
        raise _StatusError(reply.status)

    async def _post_negotiated(
        self, endpoint: Endpoint, body: bytes, read_timeout: float, *, last: bool
    ) -> Reply:
        """POST over a logged-on connection: the poll's own, or (``last``, a Delete that may
        run beside a parked Receive) one of its own, closed after it."""
        if last:
            channel = self._new_channel(endpoint)
        else:
            if self._channel is None:
                self._channel = self._new_channel(endpoint)
            channel = self._channel
        try:
            status, reply = await channel.post(body, read_timeout)
        except ChannelError as exc:
            raise HttpFailure(exc.kind, str(exc)) from None
        except LogonRefused:
            return Reply(401, b"")
        except LogonError as exc:
            raise _NegotiateError(str(exc)) from None
        finally:
            if last:
                channel.close()
        return Reply(status, reply)

    def _new_channel(self, endpoint: Endpoint) -> Channel:
        return Channel(
            self.settings,
            endpoint.url,
            endpoint.ssl,
            endpoint.connect_timeout,
            self._http.executor,
        )

    def _op_timeout(self, deadline: float | None = None) -> int:
        """The OperationTimeout (whole seconds), within what is left of the deadline."""
        timeout = self.settings.operation_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        return max(1, int(timeout))

    def _read_timeout(self, op_timeout: int) -> float:
        # the host answers a Receive by its OperationTimeout: wait that, and the read margin
        return max(self.settings.read_timeout, op_timeout + 5.0)

    # ---- cleanup ----

    def _give_up_pool(self) -> None:
        """Forget the pool at once and delete its shell in the background."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        self._deleting.add(pool.shell_id)  # still open (and recorded) until the Delete ends
        task = asyncio.get_running_loop().create_task(self._delete_shell(pool.shell_id))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def _forget_pool(self) -> None:
        """Forget the pool without a request; its shell is deleted after the next answer."""
        pool, self._pool = self._pool, None
        if pool is not None and not self._closed and len(self._abandoned) < _MAX_ABANDONED:
            self._abandoned.add(pool.shell_id)
        self._shells_changed()

    async def _discard_pool(self) -> None:
        """Forget the pool, after a best-effort Delete of its shell; never raises."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await self._delete_shell(pool.shell_id)

    async def _delete_shell(self, shell_id: str) -> None:
        self._deleting.add(shell_id)
        try:
            async with self._http.cleanup_slots:
                await asyncio.wait_for(self._delete(shell_id), _CLEANUP_TIMEOUT_S)
        except _FaultError:
            pass  # already gone (the host forgot it, or rebooted)
        except Exception as exc:
            self._debug_failure("deleting the shell", exc)
            if not self._closed and len(self._abandoned) < _MAX_ABANDONED:
                self._abandoned.add(shell_id)
        finally:
            self._deleting.discard(shell_id)
            self._shells_changed()

    async def _delete(self, shell_id: str) -> None:
        # its own connection, closed after it: 2,000 shells deleted at shutdown left 2,000
        # idle TLS connections in the pool until the session closed
        await self._call(
            self._envelopes.delete(shell_id, int(_CLEANUP_TIMEOUT_S)),
            read_timeout=_CLEANUP_TIMEOUT_S,
            last=True,
        )

    async def _delete_abandoned(self) -> None:
        for shell_id in list(self._abandoned):
            try:
                await self._delete(shell_id)
            except _FaultError:
                pass
            except Exception as exc:
                self._debug_failure("deleting an abandoned shell", exc)
                continue
            self._abandoned.discard(shell_id)
            LOGGER.debug(
                "%s: deleted shell %s left open by a failed pool", self.settings.name, shell_id
            )
        self._shells_changed()

    async def _delete_inherited(self) -> None:
        """Delete the shells a killed predecessor left, before this pool adds one. A fault:
        already gone. Any other failure fails the poll, as the Create would have."""
        for shell_id in sorted(self._inherited):
            with contextlib.suppress(_FaultError):  # idled out, or the host rebooted
                await self._delete(shell_id)
            self._inherited.discard(shell_id)
            LOGGER.debug("%s: deleted shell %s left by the last run", self.settings.name, shell_id)
        self._shells_changed()

    def _owned_shells(self) -> frozenset[str]:
        pool = {self._pool.shell_id} if self._pool is not None else set()
        return super()._owned_shells() | self._abandoned | self._deleting | pool

    def _debug_failure(self, what: str, exc: Exception) -> None:
        LOGGER.debug("%s: %s failed (%s)", self.settings.name, what, type(exc).__name__)

    def _translate(self, exc: Exception) -> TransportError:
        kind, text = _classify(exc)
        return transport_error(
            self.settings.name,
            kind,
            text,
            self._secrets,
            LOGGER,
            auth=isinstance(exc, (_AuthError, _NegotiateError)),
            pipeline_failed=isinstance(exc, PipelineFailedError),
        )


def _classify(exc: Exception) -> tuple[str, str]:
    """The kind of failure (psrp.py's words for the same failures) and its text."""
    if isinstance(exc, HttpFailure):
        return exc.kind, str(exc)
    kinds: tuple[tuple[type[BaseException], str], ...] = (
        (_AuthError, "authentication failed"),
        (_NegotiateError, "negotiate error"),
        (SealError, "WinRM error"),
        (_FaultError, "WSMan fault"),
        (_StatusError, "HTTP error"),
        (_PoolError, "PSRP error"),
        (PSRPCoreError, "PSRP error"),
        (EnvelopeError, "WinRM error"),
        (DeadlineError, "deadline"),
        (PipelineFailedError, "pipeline failed"),
        (BadAnswerError, "bad answer"),
        (ClosedError, "closed"),
    )
    for exc_type, kind in kinds:
        if isinstance(exc, exc_type):
            return kind, str(exc)
    return f"unexpected {type(exc).__name__}", ""


def _record_text(record: Any) -> str:
    """An error record's message (what PowerShell shows first)."""
    try:
        message = getattr(getattr(record, "Exception", None), "Message", None)
        return str(message) if message else str(record)
    except Exception:
        return type(record).__name__


def _loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
