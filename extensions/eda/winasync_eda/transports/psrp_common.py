"""What the two PSRP backends (pypsrp's threads, ``psrp``; asyncio's, ``aio_psrp``) share: how
a failed poll is told, and the rules of their arguments.

Both backends name a failure by the same kinds ("connection error", "WSMan fault",
"authentication failed", "pipeline failed", ...) and raise the same classes from ``base``, so
the scheduler's retry and backoff, the logs and the host events do not depend on the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Final

from ..secret import scrub, secret_forms
from ..settings import HostSettings
from .base import AuthenticationFailed, HostUnsupported, PollRequest, TransportError
from .poll_wire import build_parameters, unsupported_reason

# the resource URI of the PowerShell endpoint both clients open their pools on
PWSH_RESOURCE: Final = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"


class PipelineFailedError(Exception):
    """The pipeline failed or wrote to the error stream."""


class ClosedError(Exception):
    """close() ran while a poll waited for its turn."""


class DeadlineError(Exception):
    """The pipeline ran past the poll's deadline and was stopped."""


def transport_error(
    host: str,
    kind: str,
    text: str,
    secrets: Sequence[str],
    logger: logging.Logger,
    *,
    auth: bool = False,
    pipeline_failed: bool = False,
) -> TransportError:
    """A TransportError naming the host and the kind of failure, with a scrubbed text; logged
    at DEBUG (WARNING for an unexpected one: a bug)."""
    text = scrub(text, secrets)
    message = f"{host}: {kind}" + (f": {text}" if text else "")
    level = logging.WARNING if kind.startswith("unexpected") else logging.DEBUG
    logger.log(level, "PSRP poll failed: %s", message)
    reason = unsupported_reason(text) if pipeline_failed else None
    if reason is not None:
        return HostUnsupported(f"{host}: unsupported: {reason}", reason)
    return AuthenticationFailed(message) if auth else TransportError(message)


def first_error(texts: Sequence[str], state: object) -> str:
    """A failed pipeline in one line: its first error record, and how many more there were."""
    if not texts:
        return f"pipeline state {state}"
    more = f" (and {len(texts) - 1} more)" if len(texts) > 1 else ""
    return texts[0] + more


def check_arguments(host: str, call_deadline_s: float, idle_timeout: int | None) -> None:
    """A transport's own arguments (not the host's settings): ValueError when out of range."""
    if call_deadline_s <= 0:
        raise ValueError(f"host {host!r}: call_deadline_s must be positive")
    if idle_timeout is not None and idle_timeout < 60:
        raise ValueError(
            f"host {host!r}: idle_timeout must be at least 60 seconds (the endpoint's minimum)"
        )


class PsrpTransportCore:
    """What both PSRP transports hold and decide alike: the host, the poll's deadline, the
    deployed script, the shells' idle timeout, and one poll of a host at a time."""

    def __init__(
        self,
        settings: HostSettings,
        call_deadline_s: float,
        *,
        poll_script: str | None,
        idle_timeout: int | None,
    ) -> None:
        check_arguments(settings.name, call_deadline_s, idle_timeout)
        self.settings = settings
        # the deadline of one poll (the source's poll_timeout)
        self.call_deadline_s = call_deadline_s
        # the path of poll.ps1 deployed on the host (signed, for Constrained Language Mode):
        # each poll runs that file; None: the script is defined as a function once per pool
        self.poll_script = poll_script
        # the shell's idle timeout, sent on Create: a source killed without closing its pools
        # leaves its shells on the host this long after its last request, not the endpoint's
        # 2 hours, which count against MaxShellsPerUser. None: the host's default.
        self.idle_timeout = idle_timeout
        self._lock = asyncio.Lock()
        self._closed = False
        self._secrets = secret_forms(settings.password, settings.username, settings.proxy)
        # shells a killed predecessor left on the host (the checkpoint names them): deleted
        # before the first pool opens, which would otherwise be one more past MaxShellsPerUser
        self._inherited: set[str] = set()
        # told each new set of shells this transport answers for (watch_shells)
        self._on_shells: Callable[[frozenset[str]], None] | None = None
        self._reported: frozenset[str] = frozenset()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.name!r})"

    def watch_shells(
        self, inherited: AbstractSet[str], on_change: Callable[[frozenset[str]], None]
    ) -> None:
        """Take the shells a previous life of the source left on the host (deleted by ShellId
        at the first contact; never any other shell: other tools may use the same account), and
        call ``on_change``, on this event loop, with every new set of shells this transport has
        open or still owes a Delete (so that the next life can delete them)."""
        self._inherited = set(inherited)
        self._on_shells = on_change
        self._loop = asyncio.get_running_loop()
        self._report(frozenset(self._inherited))

    def _owned_shells(self) -> frozenset[str]:
        """The shells open on the host that this transport answers for (the subclasses add the
        pool's own and the abandoned ones)."""
        return frozenset(self._inherited)

    def _shells_changed(self) -> None:
        """Report the shells after a change; from the event loop or a worker thread."""
        if self._on_shells is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                self._loop.call_soon_threadsafe(self._report, self._owned_shells())

    def _report(self, shells: frozenset[str]) -> None:
        if self._on_shells is not None and shells != self._reported:
            self._reported = shells
            self._on_shells(shells)

    @property
    def busy(self) -> bool:
        """True while a poll holds this host (on pypsrp, a stuck worker thread keeps it busy)."""
        return self._lock.locked()

    def _start_poll(self, request: PollRequest) -> tuple[Mapping[str, str], float, bool]:
        """The poll's script parameters, its deadline (a waiting poll may take its wait on top
        of the usual one), and whether it waits on the host."""
        if self._closed:
            raise TransportError(f"{self.settings.name}: the PSRP transport is closed")
        deadline = time.monotonic() + self.call_deadline_s + max(0.0, request.wait_s)
        return build_parameters(request), deadline, request.wait_s > 0
