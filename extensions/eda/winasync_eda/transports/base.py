"""What every transport returns: one snapshot of a host's async dir per poll.

A transport only fetches; it never decides what a job's status is (see ``classify``) nor what is
new (see ``tracker``). That keeps the PSRP and the local backend interchangeable in tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class TransportError(Exception):
    """A poll failed in a way that a later poll may not (network, fault, broken pool)."""


class AuthenticationFailed(TransportError):
    """The host refused the credentials: back off long, to spare the account a lockout."""


class HostUnsupported(TransportError):
    """The host cannot run the poll script (Constrained Language Mode): ask again rarely."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FileKey:
    """What tells that a job file changed since it was last read."""

    size: int
    mtime_ms: int

    def encode(self) -> str:
        return f"{self.size}:{self.mtime_ms}"


@dataclass(frozen=True)
class PollRequest:
    async_dir: str
    known: Mapping[str, FileKey] = field(default_factory=dict)
    pids: Sequence[int] = ()
    only: Sequence[str] = ()
    # a file larger than this is never read whole: the host summarises a bounded read of it
    max_bytes: int = 1024 * 1024
    # the answer's byte budget: files past it are listed as deferred and read by the next polls
    max_answer_bytes: int = 4 * 1024 * 1024
    # watch mode: the host waits up to this long for a change before it answers (0: at once)
    wait_s: float = 0.0
    # the watchdog states the client last saw (pid -> start ms, -1, or None: gone); with
    # wait_s, a pid whose state differs (or is absent here) ends the wait
    seen_procs: Mapping[int, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    """A job file that is new or changed since the last poll."""

    name: str
    size: int
    mtime_ms: int
    ctime_ms: int | None = None
    content: bytes | None = None
    summary: Mapping[str, Any] | None = None
    error: str | None = None

    @property
    def key(self) -> FileKey:
        return FileKey(self.size, self.mtime_ms)


@dataclass(frozen=True)
class Snapshot:
    """One poll's answer; unchanged known files are simply absent from ``changed``."""

    results_dir: str
    exists: bool
    now_ms: int
    boot_ms: int | None
    changed: Sequence[FileEntry] = ()
    gone: Sequence[str] = ()
    # pid -> process start in ms; -1: runs, start unknown; None: no such process
    procs: Mapping[int, int | None] = field(default_factory=dict)
    # the host's ANSI code page (what Set-Content wrote on 5.1 in 2.15-2.18); None: unknown
    ansi_codepage: int | None = None
    # job files present but left for the next polls (the answer's byte budget was spent)
    deferred: Sequence[str] = ()


class Transport(Protocol):
    """A connection to one host. Not shared between hosts; used by one poll at a time."""

    async def poll(self, request: PollRequest) -> Snapshot: ...

    async def close(self) -> None: ...
