"""The PSRP backend: one RunspacePool per host, one pipeline per poll (docs/poll-protocol.md).

The poll script is sent once per pool, as a global function that each poll then calls by name:
sending the 7 KB script with every poll cost about 11 KB and 1-2 ms of client CPU per poll.

pypsrp is synchronous and not thread-safe, so each host's blocking work runs in one worker thread
at a time (an executor thread under a per-transport lock). A thread cannot be interrupted: the
poll returns on its deadline anyway, and the lock stays held until that thread ends, so a host
never has two threads on one pool.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
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

from ..model import is_job_name
from ..secret import scrub, secret_forms
from ..settings import HostSettings
from .base import AuthenticationFailed, FileEntry, PollRequest, Snapshot, TransportError

LOGGER = logging.getLogger(__name__)
# pypsrp logs every pipeline at INFO: with hundreds of hosts polled every few seconds that
# drowns ansible-rulebook -v output. Quiet it unless the user configured its level.
if logging.getLogger("pypsrp").level == logging.NOTSET:
    logging.getLogger("pypsrp").setLevel(logging.WARNING)

POLL_SCRIPT: Final = Path(__file__).with_name("poll.ps1").read_text(encoding="utf-8")
POLL_FUNCTION: Final = "Invoke-WinasyncPoll"
DEFINE_MARKER: Final = "# winasync-eda-poll-define v1"
# run once per pool: the poll script, unchanged, as the body of a function in the global scope
DEFINE_SCRIPT: Final = f"{DEFINE_MARKER}\nfunction global:{POLL_FUNCTION} {{\n{POLL_SCRIPT}\n}}\n"
PARAMETER_NAMES: Final = ("AsyncDir", "Known", "Pids", "Only", "MaxBytes")
# how long past its own deadline a worker thread may take to report before the poll gives up
_GRACE_S = 5.0
_MAX_ABANDONED: Final = 64

_T = TypeVar("_T")


class _BadAnswerError(Exception):
    """The host answered something that is not the poll protocol's JSON."""


class _PipelineFailedError(Exception):
    """The pipeline failed or wrote to the error stream."""


class _ClosedError(Exception):
    """close() ran while a poll waited for its turn."""


class _DeadlineError(Exception):
    """The pipeline ran past the poll's deadline and was stopped."""


def build_parameters(request: PollRequest) -> dict[str, str]:
    """The poll script's parameters, every one a string (never pasted into the script)."""
    known = {name: key.encode() for name, key in request.known.items()}
    return {
        "AsyncDir": request.async_dir,
        "Known": json.dumps(known, separators=(",", ":")),
        "Pids": json.dumps([int(pid) for pid in request.pids], separators=(",", ":")),
        "Only": json.dumps([str(name) for name in request.only], separators=(",", ":")),
        "MaxBytes": str(int(request.max_bytes)),
    }


def parse_answer(output: Sequence[object]) -> Snapshot:
    """Turn the pipeline's single JSON string into a Snapshot (_BadAnswerError on anything else)."""
    if len(output) != 1 or not isinstance(output[0], str):
        raise _BadAnswerError(f"expected one JSON string, got {len(output)} output object(s)")
    try:
        data = json.loads(output[0])
    except ValueError:
        raise _BadAnswerError("the output is not JSON") from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise _BadAnswerError("the output is not a version 1 poll answer")
    files = _get(data, "files", list)
    gone = _get(data, "gone", list)
    procs = _get(data, "procs", dict)
    if not all(isinstance(name, str) for name in gone):
        raise _BadAnswerError("'gone' holds a non-string")
    return Snapshot(
        results_dir=_get(data, "dir", str),
        exists=_get(data, "exists", bool),
        now_ms=_get_int(data, "now_ms"),
        boot_ms=_get_optional_int(data, "boot_ms"),
        changed=[_parse_file(item) for item in files],
        gone=list(gone),
        procs={_parse_pid(key): _proc_value(value) for key, value in procs.items()},
    )


def _get(data: Mapping[str, Any], key: str, kind: type[_T]) -> _T:
    value = data.get(key)
    if not isinstance(value, kind):
        raise _BadAnswerError(f"{key!r} is not a {kind.__name__}")
    return value


def _get_int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadAnswerError(f"{key!r} is not an integer")
    return value


def _get_optional_int(data: Mapping[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _get_int(data, key)


def _parse_file(item: object) -> FileEntry:
    if not isinstance(item, dict):
        raise _BadAnswerError("a 'files' item is not an object")
    name = _get(item, "name", str)
    if not is_job_name(name):
        raise _BadAnswerError("a 'files' item has a name that is not a job file name")
    content = item.get("content")
    if content is not None:
        if not isinstance(content, str):
            raise _BadAnswerError(f"{name}: 'content' is not a string")
        try:
            content = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise _BadAnswerError(f"{name}: 'content' is not base64") from None
    summary = item.get("summary")
    if summary is not None and not isinstance(summary, dict):
        raise _BadAnswerError(f"{name}: 'summary' is not an object")
    error = item.get("error")
    if error is not None and not isinstance(error, str):
        raise _BadAnswerError(f"{name}: 'error' is not a string")
    return FileEntry(
        name=name,
        size=_get_int(item, "size"),
        mtime_ms=_get_int(item, "mtime_ms"),
        ctime_ms=_get_optional_int(item, "ctime_ms"),
        content=content,
        summary=summary,
        error=error,
    )


def _parse_pid(key: str) -> int:
    if not key.isascii() or not key.isdigit():
        raise _BadAnswerError("a 'procs' key is not a pid")
    return int(key)


def _proc_value(value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _BadAnswerError("a 'procs' value is not an integer or null")


class PsrpTransport:
    """A host polled over PSRP; implements ``Transport``. Not shared between hosts."""

    def __init__(
        self, settings: HostSettings, call_deadline_s: float, executor: Executor | None = None
    ) -> None:
        if call_deadline_s <= 0:
            raise ValueError(f"host {settings.name!r}: call_deadline_s must be positive")
        self.settings = settings
        # the deadline of one poll (the source's poll_timeout)
        self.call_deadline_s = call_deadline_s
        # the source passes a pool sized for max_concurrency; None: the loop's default one
        self._executor = executor
        self._lock = asyncio.Lock()
        self._closed = False
        # touched only by the worker thread that holds the lock
        self._wsman: WSMan | None = None
        self._pool: RunspacePool | None = None
        # shells a failed pool left open on the host (shell id -> resource URI): Windows allows
        # a user only so many (MaxShellsPerUser, 30 by default) until they idle out after 2 h,
        # so they are deleted once the host answers again
        self._abandoned: dict[str, str] = {}
        self._secrets = secret_forms(settings.password, settings.username, settings.proxy)
        # when the host last answered a poll (an encrypted session idle too long is rebuilt)
        self._last_answer = time.monotonic()

    def __repr__(self) -> str:
        return f"PsrpTransport({self.settings.name!r})"

    @property
    def busy(self) -> bool:
        """True while a worker thread works for this host (a stuck call keeps it busy)."""
        return self._lock.locked()

    async def poll(self, request: PollRequest) -> Snapshot:
        if self._closed:
            raise TransportError(f"{self.settings.name}: the PSRP transport is closed")
        parameters = build_parameters(request)
        deadline = time.monotonic() + self.call_deadline_s
        return await self._in_thread(
            deadline, functools.partial(self._poll_blocking, parameters, deadline)
        )

    async def close(self) -> None:
        """Close the pool (a WSMan Delete); idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        LOGGER.debug("%s: closing the PSRP runspace pool", self.settings.name)
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

    # ---- everything below runs in the worker thread, under the lock ----

    def _poll_blocking(self, parameters: Mapping[str, str], deadline: float) -> Snapshot:
        try:
            snapshot = self._invoke_once_more_if_stale(parameters, deadline)
        except Exception as exc:  # every failure becomes a TransportError
            error = self._translate(exc)
        else:
            if self._closed:  # closed while this thread ran: close() left the pool to it
                self._discard_pool()
            return snapshot
        self._discard_pool()
        # raised outside the except block: no chained cause or context can carry the original text
        raise error

    def _invoke_once_more_if_stale(
        self, parameters: Mapping[str, str], deadline: float
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
            snapshot = self._invoke(parameters, deadline)
        except (WinRMTransportError, requests.exceptions.ConnectionError) as exc:
            if not (reused and self.settings.seals_messages) or time.monotonic() >= deadline:
                raise
            LOGGER.debug(
                "%s: the encrypted session broke (%s); opening a new pool",
                self.settings.name,
                type(exc).__name__,
            )
            self._forget_pool()
            snapshot = self._invoke(parameters, deadline)
        self._last_answer = time.monotonic()
        return snapshot

    def _forget_pool(self) -> None:
        """Drop a pool whose session cannot be used any more, without a request: its shell is
        deleted later, over the next session that works."""
        pool, wsman = self._pool, self._wsman
        self._pool = self._wsman = None
        shell = pool.shell if pool is not None else None
        if (
            shell is not None
            and shell.opened
            and shell.id
            and len(self._abandoned) < _MAX_ABANDONED
        ):
            self._abandoned[str(shell.id)] = shell.resource_uri
        if wsman is not None:
            try:
                wsman.close()  # the local HTTP session only
            except Exception as exc:
                self._debug_failure("closing the session", exc)

    def _invoke(self, parameters: Mapping[str, str], deadline: float) -> Snapshot:
        if self._closed:  # close() ran while this poll waited for the lock
            raise _ClosedError("the transport is closed")
        pool = self._open_pool(deadline)
        # If the function is missing (the server reset the runspace), this pipeline fails: the
        # poll fails, the pool is discarded, and the next poll opens a new pool and defines it.
        ps = PowerShell(pool)
        ps.add_cmdlet(POLL_FUNCTION)
        for name in PARAMETER_NAMES:
            ps.add_parameter(name, parameters[name])
        output = self._run(ps, deadline)
        snapshot = parse_answer(output)
        try:
            _terminate(ps)
        except Exception as exc:
            self._debug_failure("closing the pipeline", exc)
            self._discard_pool()
        if self._abandoned and self._wsman is not None:
            self._delete_abandoned(self._wsman)
        return snapshot

    def _run(self, ps: PowerShell, deadline: float) -> list[object]:
        """Run a pipeline to its end by the deadline; its output, or an exception."""
        ps.begin_invoke()
        while ps.state == PSInvocationState.RUNNING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stop(ps)
                raise _DeadlineError("the pipeline did not finish within the call deadline")
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

    def _open_pool(self, deadline: float) -> RunspacePool:
        if self._pool is not None:
            return self._pool
        LOGGER.debug("%s: opening a PSRP runspace pool", self.settings.name)
        self._wsman = WSMan(**self.settings.wsman_kwargs())
        # exactly one runspace: the function defined below lives in that runspace, so every
        # pipeline of this pool finds it (with more runspaces a poll could land in another one)
        self._pool = RunspacePool(self._wsman, min_runspaces=1, max_runspaces=1)
        self._pool.open()
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
        text = scrub(_exception_text(exc), self._secrets)
        message = f"{self.settings.name}: {kind}" + (f": {text}" if text else "")
        level = logging.WARNING if kind.startswith("unexpected") else logging.DEBUG
        LOGGER.log(level, "PSRP poll failed: %s", message)
        return cls(message)


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
        (_BadAnswerError, "bad answer"),
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
    records = list(ps.streams.error)
    if not records:
        return f"pipeline state {ps.state}"
    try:
        text = str(records[0])
    except Exception:
        text = type(records[0]).__name__
    more = f" (and {len(records) - 1} more)" if len(records) > 1 else ""
    return text + more
