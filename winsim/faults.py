"""Faults a test injects into one simulated host at run time, from any thread.

A fault applies to the next ``count`` matching HTTP requests (``None``: until cleared). The server
asks the plan once per request (``take``) and carries the fault out; this module only decides.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# E_FAIL: what a generic WSMan fault carries unless the test asks for another code
DEFAULT_FAULT_CODE = 0x80004005


class FaultKind(enum.StrEnum):
    # the connection is closed at once; until cleared, the port also stops listening
    REFUSE = "refuse"
    # HTTP 401 whatever the credentials
    UNAUTHORIZED = "unauthorized"
    # HTTP 500 with a SOAP fault carrying a WSManFault Code
    WSMAN_FAULT = "wsman_fault"
    # an HTTP error status with a plain-text body (no SOAP)
    HTTP_ERROR = "http_error"
    # the reply waits ``delay`` seconds (make it longer than the client's read timeout)
    DELAY = "delay"
    # the connection is cut in the middle of the reply body (a logon leg: reset, unanswered)
    DROP = "drop"
    # the reply is whole, then the server closes the keep-alive connection (as HTTP.sys does
    # after 120 s idle): a Negotiate client must authenticate again on a new one
    CLOSE = "close"
    # the request's shell is forgotten: the client gets the unknown-shell WSMan fault
    SHELL_LOST = "shell_lost"
    # the next Receive on a shell carries the pool's Broken state; the shell is then forgotten
    POOL_BROKEN = "pool_broken"
    # alternately down (like REFUSE) and up: per request, or per ``period`` seconds
    FLAP = "flap"


# kinds that only make sense for a request that names a shell
_SHELL_KINDS = frozenset({FaultKind.SHELL_LOST, FaultKind.POOL_BROKEN})
# the action of a Negotiate handshake leg (a POST without a body; counted under it too): a fault
# applies to those legs only when its ``actions`` name it (CLOSE and DROP are carried out there)
LOGON = "Auth"


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    count: int | None = None
    # WS-Management action names (Create, Command, Send, Receive, Signal, Get, Delete); None: any
    actions: frozenset[str] | None = None
    delay: float = 35.0
    status: int = 500
    code: int = DEFAULT_FAULT_CODE
    message: str = "Simulated fault"
    period: float | None = None

    def matches(self, action: str, has_shell: bool) -> bool:
        if self.actions is None and action == LOGON:
            return False
        if self.actions is not None and action not in self.actions:
            return False
        if self.kind == FaultKind.POOL_BROKEN and action != "Receive":
            return False
        return has_shell or self.kind not in _SHELL_KINDS


@dataclass
class _Active:
    fault: Fault
    remaining: int | None
    started: float
    seen: int = 0


class FaultPlan:
    """The faults active on one host; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: list[_Active] = []
        self._hits: dict[FaultKind, int] = {}
        # called (outside the lock) when ``refusing`` may have changed; set by the server
        self.on_listen_change: Callable[[], None] | None = None

    def inject(
        self,
        kind: FaultKind | str,
        *,
        count: int | None = None,
        actions: Iterable[str] | None = None,
        delay: float = 35.0,
        status: int = 500,
        code: int = DEFAULT_FAULT_CODE,
        message: str = "Simulated fault",
        period: float | None = None,
    ) -> Fault:
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None: until cleared)")
        if period is not None and period <= 0:
            raise ValueError("period must be positive")
        fault = Fault(
            kind=FaultKind(kind),
            count=count,
            actions=frozenset(actions) if actions is not None else None,
            delay=delay,
            status=status,
            code=code,
            message=message,
            period=period,
        )
        with self._lock:
            self._active.append(_Active(fault, count, time.monotonic()))
        self._listen_changed()
        return fault

    def clear(self, kind: FaultKind | str | None = None) -> None:
        with self._lock:
            if kind is None:
                self._active.clear()
            else:
                self._active = [a for a in self._active if a.fault.kind != FaultKind(kind)]
        self._listen_changed()

    def active(self) -> list[Fault]:
        with self._lock:
            return [a.fault for a in self._active]

    def hits(self, kind: FaultKind | str | None = None) -> int:
        """How many requests a fault (of this kind) took effect on."""
        with self._lock:
            if kind is None:
                return sum(self._hits.values())
            return self._hits.get(FaultKind(kind), 0)

    @property
    def refusing(self) -> bool:
        """True while a REFUSE fault without a count is active: the port should not listen."""
        with self._lock:
            return any(
                a.fault.kind == FaultKind.REFUSE and a.remaining is None for a in self._active
            )

    def take(self, action: str, has_shell: bool) -> Fault | None:
        """The fault to carry out on this request, if any (consumes one use of it)."""
        fault: Fault | None = None
        with self._lock:
            if not self._active:
                return None
            for entry in self._active:
                if not entry.fault.matches(action, has_shell):
                    continue
                entry.seen += 1
                if entry.remaining is not None:
                    entry.remaining -= 1
                    if entry.remaining == 0:
                        self._active.remove(entry)
                if entry.fault.kind != FaultKind.FLAP or _flap_down(entry):
                    fault = entry.fault
                    self._hits[fault.kind] = self._hits.get(fault.kind, 0) + 1
                break
        return fault

    def _listen_changed(self) -> None:
        callback = self.on_listen_change
        if callback is not None:
            callback()


def _flap_down(entry: _Active) -> bool:
    """Down first, then up, alternating per request or per time slice."""
    if entry.fault.period is None:
        return entry.seen % 2 == 1
    elapsed = time.monotonic() - entry.started
    return int(elapsed / entry.fault.period) % 2 == 0
