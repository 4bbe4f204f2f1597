"""Per-host traffic counters, so tests and benchmarks can measure what a client costs a host.

Written on the server's event loop, read and reset from any thread (a lock keeps each snapshot
consistent). Bytes are HTTP body bytes, in and out; headers are not counted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class ActionCounts:
    """HTTP requests and body bytes for one WS-Management action (or for all of them)."""

    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def __add__(self, other: ActionCounts) -> ActionCounts:
        return ActionCounts(
            self.requests + other.requests,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
        )


class Counters:
    """Counts per action name: ``Create``, ``Command``, ``Send``, ``Receive``, ``Signal``, ``Get``,
    ``Delete`` (``unknown`` for a body that is not a WS-Management envelope)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_action: dict[str, ActionCounts] = {}
        self._auth_failures = 0

    def record(self, action: str, bytes_in: int, bytes_out: int) -> None:
        with self._lock:
            old = self._by_action.get(action, _ZERO)
            self._by_action[action] = ActionCounts(
                old.requests + 1, old.bytes_in + bytes_in, old.bytes_out + bytes_out
            )

    def record_auth_failure(self) -> None:
        """A logon refused for its credentials: what an account lockout policy counts."""
        with self._lock:
            self._auth_failures += 1

    @property
    def auth_failures(self) -> int:
        with self._lock:
            return self._auth_failures

    def by_action(self) -> dict[str, ActionCounts]:
        with self._lock:
            return dict(self._by_action)

    def total(self) -> ActionCounts:
        total = _ZERO
        for counts in self.by_action().values():
            total = total + counts
        return total

    def get(self, action: str) -> ActionCounts:
        with self._lock:
            return self._by_action.get(action, _ZERO)

    @property
    def requests(self) -> int:
        return self.total().requests

    @property
    def bytes_in(self) -> int:
        return self.total().bytes_in

    @property
    def bytes_out(self) -> int:
        return self.total().bytes_out

    def reset(self) -> None:
        with self._lock:
            self._by_action.clear()
            self._auth_failures = 0


_ZERO = ActionCounts()
