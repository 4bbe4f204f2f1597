"""The PSRP backend: one RunspacePool per host, one pipeline per poll (docs/poll-protocol.md).

What goes over the wire (parameters, the answer) is ``poll_wire``; this module moves it.

The poll script is sent once per pool, as a global function that each poll then calls by name:
sending the 7 KB script with every poll cost about 11 KB and 1-2 ms of client CPU per poll.

pypsrp is synchronous and not thread-safe, so each host's blocking work runs in one worker thread
at a time (an executor thread under a per-transport lock). A thread cannot be interrupted: the
poll returns on its deadline anyway, and the lock stays held until that thread ends, so a host
never has two threads on one pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any, Final, TypeVar

import requests
from pypsrp.complex_objects import PSInvocationState
from pypsrp.exceptions import (
    AuthenticationError,
    InvalidPSRPOperation,
    WinRMError,
    WinRMTransportError,
    WSManFaultError,
)
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import SelectorSet, WSMan

from ..settings import HostSettings
from .base import AuthenticationFailed, PollRequest, Snapshot, TransportError
from .poll_wire import DEFINE_SCRIPT, FUNCTION, BadAnswerError, parse_answer
from .psrp_common import PWSH_RESOURCE, PsrpTransportCore, first_error, transport_error

LOGGER = logging.getLogger(__name__)
# pypsrp logs every pipeline at INFO: with hundreds of hosts polled every few seconds that
# drowns ansible-rulebook -v output. Quiet it unless the user configured its level.
if logging.getLogger("pypsrp").level == logging.NOTSET:
    logging.getLogger("pypsrp").setLevel(logging.WARNING)

# how long past its own deadline a worker thread may take to report before the poll gives up
_GRACE_S = 5.0
_MAX_ABANDONED: Final = 64

_T = TypeVar("_T")
# pypsrp < 0.9 cannot set a shell's idle timeout
_POOL_HAS_IDLE_TIMEOUT: Final = "idle_timeout" in inspect.signature(RunspacePool).parameters


class _PipelineFailedError(Exception):
    """The pipeline failed or wrote to the error stream."""


class _ClosedError(Exception):
    """close() ran while a poll waited for its turn."""


class _DeadlineError(Exception):
    """The pipeline ran past the poll's deadline and was stopped."""


class PsrpTransport(PsrpTransportCore):
    """A host polled over PSRP; implements ``Transport``. Not shared between hosts."""

    def __init__(
        self,
        settings: HostSettings,
        call_deadline_s: float,
        executor: Executor | None = None,
        *,
        poll_script: str | None = None,
        idle_timeout: int | None = None,
    ) -> None:
        super().__init__(
            settings, call_deadline_s, poll_script=poll_script, idle_timeout=idle_timeout
        )
        # the source passes a pool sized for max_concurrency; None: the loop's default one
        self._executor = executor
        # touched only by the worker thread that holds the lock
        self._wsman: WSMan | None = None
        self._pool: RunspacePool | None = None
        # shells a failed pool left open on the host (shell id -> resource URI): Windows allows
        # a user only so many (MaxShellsPerUser, 30 by default) until they idle out after 2 h,
        # so they are deleted once the host answers again
        self._abandoned: dict[str, str] = {}
        # (shell id, resource URI) of the open pool, written by the worker thread: close() reads
        # it to delete the shell from aside while a waiting poll holds the pool
        self._shell_ref: tuple[str, str] | None = None
        # when the host last answered a poll (an encrypted session idle too long is rebuilt)
        self._last_answer = time.monotonic()

    async def poll(self, request: PollRequest) -> Snapshot:
        parameters, deadline, park = self._start_poll(request)
        return await self._in_thread(
            deadline, functools.partial(self._poll_blocking, parameters, deadline, park)
        )

    async def close(self) -> None:
        """Close the pool (a WSMan Delete); idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        LOGGER.debug("%s: closing the PSRP runspace pool", self.settings.name)
        shell = self._shell_ref
        if self._lock.locked() and shell is not None:
            # a poll holds the pool, perhaps parked for a minute on a waiting pipeline: delete
            # its shell over a connection of its own, which ends the pipeline and the Receive
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(
                    loop.run_in_executor(self._executor, self._delete_shell_aside, shell),
                    self.settings.connection_timeout + self.settings.read_timeout,
                )
            except TimeoutError:
                LOGGER.debug("%s: deleting the shell aside timed out", self.settings.name)
        # a Delete may wait for a connect and a read timeout
        budget = self.settings.connection_timeout + self.settings.read_timeout
        deadline = time.monotonic() + max(budget, self.call_deadline_s)
        try:
            await self._in_thread(deadline, self._discard_pool)
        except TransportError as exc:
            # a poll thread still holds the pool: it closes the pool when it ends (see _closed)
            LOGGER.debug("%s: close did not finish: %s", self.settings.name, exc)

    async def _in_thread(self, deadline: float, work: Callable[[], _T]) -> _T:
        """Run ``work`` in a thread by the deadline; the lock is released when the thread ends."""
        host = self.settings.name
        try:
            await asyncio.wait_for(self._lock.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise TransportError(f"{host}: deadline: the previous call has not ended") from None
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, work)
        except BaseException:
            self._lock.release()
            raise
        future.add_done_callback(self._thread_ended)
        timeout = max(0.0, deadline - time.monotonic()) + _GRACE_S
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            pass
        # the worker is stuck in a blocking call: it forgets the pool itself when it returns
        LOGGER.debug("%s: the PSRP call is past its deadline; left to end in its thread", host)
        raise TransportError(f"{host}: deadline: no answer within the call deadline")

    def _thread_ended(self, future: asyncio.Future[Any]) -> None:
        self._lock.release()
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned worker's error is not "never retrieved"

    def _delete_shell_aside(self, shell: tuple[str, str]) -> None:
        """Delete a shell over a WSMan session of its own (pypsrp objects are not thread-safe:
        the pool's own session stays with the thread that holds it). Never raises."""
        wsman = None
        try:
            wsman = WSMan(**self.settings.wsman_kwargs())
            selectors = SelectorSet()
            selectors.add_option("ShellId", shell[0])
            wsman.delete(shell[1], selector_set=selectors)
        except Exception as exc:
            self._debug_failure("deleting the shell aside", exc)
        finally:
            if wsman is not None:
                try:
                    wsman.close()
                except Exception as exc:
                    self._debug_failure("closing the aside session", exc)

    # ---- everything below runs in the worker thread, under the lock ----

    def _poll_blocking(
        self, parameters: Mapping[str, str], deadline: float, park: bool = False
    ) -> Snapshot:
        try:
            snapshot = self._invoke_once_more_if_stale(parameters, deadline, park)
        except Exception as exc:  # every failure becomes a TransportError
            error = self._translate(exc)
        else:
            if self._closed:  # closed while this thread ran: close() left the pool to it
                self._discard_pool()
            return snapshot
        if isinstance(error, AuthenticationFailed):
            # a Delete would carry the refused credentials again, and lockout policies count
            # each refused logon: the shell is deleted once the host lets the source in again
            self._forget_pool()
        else:
            self._discard_pool()
        # raised outside the except block: no chained cause or context can carry the original text
        raise error

    def _invoke_once_more_if_stale(
        self, parameters: Mapping[str, str], deadline: float, park: bool
    ) -> Snapshot:
        """``_invoke``, again on a new pool when the host closed an encrypted session's connection.

        Windows (HTTP.sys) closes a keep-alive connection idle for 120 s. pypsrp then logs on
        again on a new connection but still seals the body for the old context, and the host
        answers 500: every later request of that session fails. The session cannot be saved:
        a session idle longer than ``sealed_idle_s`` is replaced before the poll, and one that
        fails this way anyway (the host closed the connection for another reason) is replaced
        at once, within this poll's deadline, and the poll goes on.
        """
        idle = time.monotonic() - self._last_answer
        if (
            self._pool is not None
            and self.settings.seals_messages
            and idle > self.settings.sealed_idle_s
        ):
            # the host has most likely closed the connection: start over without a request
            # that would fail (the old shell is deleted once the new session answers)
            LOGGER.debug(
                "%s: the encrypted session was idle %.0f s; opening a new pool",
                self.settings.name,
                idle,
            )
            self._forget_pool()
        reused = self._pool is not None
        try:
            snapshot = self._invoke(parameters, deadline, park)
        except (WinRMTransportError, requests.exceptions.ConnectionError) as exc:
            if not (reused and self.settings.seals_messages) or time.monotonic() >= deadline:
                raise
            LOGGER.debug(
                "%s: the encrypted session broke (%s); opening a new pool",
                self.settings.name,
                type(exc).__name__,
            )
            self._forget_pool()
            snapshot = self._invoke(parameters, deadline, park)
        self._last_answer = time.monotonic()
        return snapshot

    def _forget_pool(self) -> None:
        """Drop a pool whose session cannot be used any more, without a request: its shell is
        deleted later, over the next session that works."""
        pool, wsman = self._pool, self._wsman
        self._pool = self._wsman = None
        self._shell_ref = None
        shell = pool.shell if pool is not None else None
        if (
            shell is not None
            and shell.opened
            and shell.id
            and len(self._abandoned) < _MAX_ABANDONED
        ):
            self._abandoned[str(shell.id)] = shell.resource_uri
        self._shells_changed()
        if wsman is not None:
            try:
                wsman.close()  # the local HTTP session only
            except Exception as exc:
                self._debug_failure("closing the session", exc)

    def _invoke(self, parameters: Mapping[str, str], deadline: float, park: bool) -> Snapshot:
        if self._closed:  # close() ran while this poll waited for the lock
            raise _ClosedError("the transport is closed")
        pool = self._open_pool(deadline)
        # If the function is missing (the server reset the runspace), this pipeline fails: the
        # poll fails, the pool is discarded, and the next poll opens a new pool and defines it.
        ps = PowerShell(pool)
        ps.add_cmdlet(self.poll_script or FUNCTION)
        for name, value in parameters.items():  # in PARAMETER_NAMES order
            ps.add_parameter(name, value)
        output = self._run(ps, deadline, park=park)
        snapshot = parse_answer(output)
        try:
            _terminate(ps)
        except Exception as exc:
            self._debug_failure("closing the pipeline", exc)
            self._discard_pool()
        if self._abandoned and self._wsman is not None:
            self._delete_abandoned(self._wsman)
        return snapshot

    def _run(self, ps: PowerShell, deadline: float, *, park: bool = False) -> list[object]:
        """Run a pipeline to its end by the deadline; its output, or an exception.

        ``park``: a waiting poll. Its Receive waits on the host with the configured
        OperationTimeout (above the wait) and HTTP read timeout (above that) while the deadline
        leaves room for both; pypsrp's per-call timeout would set the read timeout to
        OperationTimeout + 2 s instead."""
        ps.begin_invoke()
        while ps.state == PSInvocationState.RUNNING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stop(ps)
                raise _DeadlineError("the pipeline did not finish within the call deadline")
            if park and remaining > self.settings.read_timeout:
                ps.poll_invoke()
                continue
            ps.poll_invoke(
                timeout=max(1, min(int(self.settings.operation_timeout), int(remaining)))
            )
        if ps.state != PSInvocationState.COMPLETED or ps.had_errors or ps.streams.error:
            raise _PipelineFailedError(_first_error(ps))
        if time.monotonic() > deadline:
            # too late: the poll has failed (or is about to) on its deadline; the pool is suspect
            raise _DeadlineError("the answer came after the call deadline")
        return list(ps.output)

    def _delete_abandoned(self, wsman: WSMan) -> None:
        """Delete the shells earlier failures left open; keep those the host did not answer for."""
        for shell_id, resource_uri in list(self._abandoned.items()):
            selectors = SelectorSet()
            selectors.add_option("ShellId", shell_id)
            try:
                wsman.delete(resource_uri, selector_set=selectors)
            except WSManFaultError:
                pass  # already gone (the host forgot it, or rebooted)
            except Exception as exc:
                self._debug_failure("deleting an abandoned shell", exc)
                continue
            del self._abandoned[shell_id]
            LOGGER.debug(
                "%s: deleted shell %s left open by a failed pool", self.settings.name, shell_id
            )
        self._shells_changed()

    def _delete_inherited(self, wsman: WSMan) -> None:
        """Delete the shells a killed predecessor left, before a new pool adds one. A fault:
        already gone. Any other failure fails the poll, as the Create would have."""
        for shell_id in sorted(self._inherited):
            selectors = SelectorSet()
            selectors.add_option("ShellId", shell_id)
            # a fault: idled out, the host rebooted, or another client deleted it
            with contextlib.suppress(WSManFaultError):
                wsman.delete(PWSH_RESOURCE, selector_set=selectors)
            self._inherited.discard(shell_id)
            LOGGER.debug("%s: deleted shell %s left by the last run", self.settings.name, shell_id)
        self._shells_changed()

    def _owned_shells(self) -> frozenset[str]:
        """Read in the worker thread that holds the lock (or on the loop once it is free)."""
        ref = self._shell_ref
        return super()._owned_shells() | set(self._abandoned) | ({ref[0]} if ref else set())

    def _open_pool(self, deadline: float) -> RunspacePool:
        if self._pool is not None:
            return self._pool
        LOGGER.debug("%s: opening a PSRP runspace pool", self.settings.name)
        self._wsman = WSMan(**self.settings.wsman_kwargs())
        if self._inherited:
            self._delete_inherited(self._wsman)
        # exactly one runspace: the function defined below lives in that runspace, so every
        # pipeline of this pool finds it (with more runspaces a poll could land in another one)
        extra: dict[str, Any] = {}
        if self.idle_timeout is not None and _POOL_HAS_IDLE_TIMEOUT:
            extra["idle_timeout"] = self.idle_timeout
        self._pool = RunspacePool(self._wsman, min_runspaces=1, max_runspaces=1, **extra)
        self._pool.open()
        self._shell_ref = (str(self._pool.shell.id), str(self._pool.shell.resource_uri))
        self._shells_changed()  # recorded now: a kill during the first wait would lose it
        if self.poll_script:
            return self._pool  # the deployed file is run by path: nothing to define
        define = PowerShell(self._pool)
        define.add_script(DEFINE_SCRIPT, use_local_scope=True)
        self._run(define, deadline)
        _terminate(define)  # a failure here fails the poll, which discards the pool
        return self._pool

    def _stop(self, ps: PowerShell) -> None:
        try:
            ps.stop()
        except Exception as exc:
            self._debug_failure("stopping the pipeline", exc)

    def _discard_pool(self) -> None:
        """Forget the pool, after a best-effort Delete; never raises."""
        pool, wsman = self._pool, self._wsman
        self._pool = self._wsman = None
        self._shell_ref = None
        if pool is not None:
            try:
                pool.close()  # sends nothing for a pool in the Broken state
            except Exception as exc:
                self._debug_failure("closing the pool", exc)
            shell = pool.shell
            if (
                shell.opened
                and shell.id
                and not self._closed
                and len(self._abandoned) < _MAX_ABANDONED
            ):
                self._abandoned[str(shell.id)] = shell.resource_uri
        self._shells_changed()
        if wsman is not None:
            try:
                wsman.close()
            except Exception as exc:
                self._debug_failure("closing the session", exc)

    def _debug_failure(self, what: str, exc: Exception) -> None:
        # only the type: the text of a cleanup failure adds nothing and could carry a URL
        LOGGER.debug("%s: %s failed (%s)", self.settings.name, what, type(exc).__name__)

    def _translate(self, exc: Exception) -> TransportError:
        """A TransportError naming the host and the kind of failure, with a scrubbed text."""
        kind, cls = _classify(exc)
        return transport_error(
            self.settings.name,
            kind,
            _exception_text(exc),
            self._secrets,
            LOGGER,
            auth=cls is AuthenticationFailed,
            pipeline_failed=isinstance(exc, _PipelineFailedError),
        )


def _terminate(ps: PowerShell) -> None:
    """End a finished pipeline on the server, which counts the open commands of each user."""
    close = getattr(ps, "close", None)
    if close is not None:
        close()  # a WSMan Signal terminate
        return
    # pypsrp before 0.9 has no close(): stop it as ansible's psrp connection does
    ps.state = PSInvocationState.RUNNING
    ps.stop()


def _classify(exc: Exception) -> tuple[str, type[TransportError]]:
    # order matters: SSLError, ConnectTimeout and ProxyError are ConnectionErrors too
    kinds: tuple[tuple[type[BaseException], str], ...] = (
        (AuthenticationError, "authentication failed"),
        (requests.exceptions.SSLError, "TLS error"),
        (requests.exceptions.ConnectTimeout, "connect timeout"),
        (requests.exceptions.ReadTimeout, "read timeout"),
        (requests.exceptions.ProxyError, "proxy error"),
        (requests.exceptions.ConnectionError, "connection error"),
        (requests.exceptions.RequestException, "HTTP error"),
        (WSManFaultError, "WSMan fault"),
        (WinRMTransportError, "HTTP error"),
        (InvalidPSRPOperation, "PSRP error"),
        (WinRMError, "WinRM error"),
        (_DeadlineError, "deadline"),
        (_PipelineFailedError, "pipeline failed"),
        (BadAnswerError, "bad answer"),
        (_ClosedError, "closed"),
    )
    for exc_type, kind in kinds:
        if isinstance(exc, exc_type):
            return kind, AuthenticationFailed if exc_type is AuthenticationError else TransportError
    if type(exc).__module__.split(".")[0] in ("spnego", "krb5", "gssapi"):
        # no usable credentials or Kerberos ticket (a wrong password is refused by the KDC,
        # before any request reaches the host): as lasting as a refused password, and retrying
        # it quickly would lock the account out just the same
        return "negotiate error", AuthenticationFailed
    return f"unexpected {type(exc).__name__}", TransportError


def _exception_text(exc: Exception) -> str:
    if isinstance(exc, WSManFaultError):
        return f"code {exc.code}: {exc.reason or ''}"
    if isinstance(exc, WinRMTransportError):
        return f"status {exc.code}"  # the response body is the server's, and may be long
    if isinstance(exc, AuthenticationError):
        return "the host refused the credentials"
    try:
        return str(exc)
    except Exception:
        return ""


def _first_error(ps: PowerShell) -> str:
    texts = []
    for record in ps.streams.error:
        try:
            texts.append(str(record))
        except Exception:
            texts.append(type(record).__name__)
    return first_error(texts, ps.state)
