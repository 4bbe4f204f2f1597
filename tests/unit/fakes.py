"""An in-memory host and a scheduler over it for the scheduler, delivery and checkpoint tests (one
unit: no network), and the settings of one PSRP host for the settings and transport tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from winasync_eda.checkpoint import Checkpoint, CheckpointStore
from winasync_eda.config import parse_args
from winasync_eda.delivery import Delivery
from winasync_eda.model import DEFAULT_EMIT, Status
from winasync_eda.scheduler import HostSlot, Scheduler, Timing
from winasync_eda.secret import Secret
from winasync_eda.settings import HostSettings
from winasync_eda.tracker import HostTracker
from winasync_eda.transports.base import (
    AuthenticationFailed,
    FileEntry,
    FileKey,
    PollRequest,
    Snapshot,
    TransportError,
)

PASSWORD = "Pa$$w0rd-Zebra/42!"
HOST = "win01"


def settings(**changes: Any) -> HostSettings:
    """A PSRP host with a username and a password, changed by ``changes``."""
    values: dict[str, Any] = {
        "name": HOST,
        "address": "win01.example.com",
        "username": "ansible",
        "password": Secret(PASSWORD),
        **changes,
    }
    return HostSettings(**values)


_DEFAULTS = parse_args({"hosts": [{"name": "me", "connection": "local"}]})


def source_timing(**changes: Any) -> Timing:
    """The scheduler's timing at the source's defaults, changed by ``changes``."""
    values: dict[str, Any] = {
        "interval": _DEFAULTS.interval,
        "jitter": _DEFAULTS.jitter,
        "max_concurrency": _DEFAULTS.max_concurrency,
        "poll_timeout": _DEFAULTS.poll_timeout,
        "backoff_max": _DEFAULTS.backoff_max,
        "auth_backoff": _DEFAULTS.auth_backoff,
        **changes,
    }
    return Timing(**values)


def running(jid: str, pid: int = 4242) -> bytes:
    return json.dumps(
        {
            "started": True,
            "finished": False,
            "ansible_job_id": jid,
            "ansible_async_watchdog_pid": pid,
        }
    ).encode()


def finished(jid: str, *, rc: int = 0, failed: bool = False, stdout: str = "ok") -> bytes:
    result: dict[str, Any] = {
        "started": True,
        "finished": True,
        "ansible_job_id": jid,
        "rc": rc,
        "stdout": stdout,
        "stderr": "",
        "changed": True,
    }
    if failed:
        result.update(failed=True, msg="non-zero return code")
    return json.dumps(result).encode()


@dataclass
class FakeHost:
    """Files, processes and a boot time; ``fail_with`` makes the next polls raise."""

    name: str
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    procs: dict[int, int] = field(default_factory=dict)
    boot_ms: int = 0
    fail_with: list[Exception] = field(default_factory=list)
    fail_always: Exception | None = None
    polls: int = 0
    concurrent: int = 0
    max_concurrent: int = 0
    delay_s: float = 0.0
    closed: int = 0
    requests: list[PollRequest] = field(default_factory=list)

    def write(self, jid: str, content: bytes) -> None:
        _, old = self.files.get(jid, (b"", 0))
        self.files[jid] = (content, max(int(time.time() * 1000), old + 1))

    def remove(self, jid: str) -> None:
        self.files.pop(jid, None)


class FakeTransport:
    """Answers polls from a FakeHost with the semantics of docs/poll-protocol.md."""

    def __init__(self, host: FakeHost, on_poll: Callable[[FakeHost], None] | None = None) -> None:
        self.host = host
        self.on_poll = on_poll

    async def poll(self, request: PollRequest) -> Snapshot:
        h = self.host
        h.polls += 1
        h.requests.append(request)
        h.concurrent += 1
        h.max_concurrent = max(h.max_concurrent, h.concurrent)
        try:
            if h.delay_s:
                await asyncio.sleep(h.delay_s)
            if self.on_poll:
                self.on_poll(h)
            if h.fail_always is not None:
                raise h.fail_always
            if h.fail_with:
                raise h.fail_with.pop(0)
            procs: dict[int, int | None] = {p: h.procs.get(p) for p in request.pids}
            changed = []
            for name, (content, mtime) in sorted(h.files.items()):
                if request.only and name not in request.only:
                    continue
                key = FileKey(len(content), mtime)
                if request.known.get(name) != key:
                    changed.append(FileEntry(name, key.size, key.mtime_ms, mtime, content=content))
            gone = [n for n in request.known if n not in h.files]
            return Snapshot(
                "C:\\Users\\ansible\\.ansible_async",
                True,
                int(time.time() * 1000),
                h.boot_ms,
                changed,
                gone,
                procs,
            )
        finally:
            h.concurrent -= 1

    async def close(self) -> None:
        self.host.closed += 1


__all__ = [
    "AuthenticationFailed",
    "FakeHost",
    "FakeTransport",
    "TransportError",
    "finished",
    "running",
]


DIR = "%USERPROFILE%\\.ansible_async"


class Watching:
    """A scheduler and a delivery over fake hosts, collecting what they emit (``async with``)."""

    def __init__(
        self,
        hosts: list[FakeHost],
        *,
        state: Path | None = None,
        timing: Timing | None = None,
        emit: frozenset[Status] = DEFAULT_EMIT,
        redeliver_after: float | None = None,
        feedback: bool = False,
        host_events: bool = False,
        store: CheckpointStore | None = None,
    ) -> None:
        self.hosts = hosts
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self.events: list[dict[str, Any]] = []
        self.checkpoint = Checkpoint(state, store)
        self.feedback: asyncio.Queue[Any] | None = asyncio.Queue() if feedback else None
        self.ack = True
        self.delivery = Delivery(
            self.queue,
            self.checkpoint,
            emit=emit,
            max_output_bytes=4096,
            redeliver_after_s=redeliver_after,
            feedback_queue=self.feedback,
        )
        self.slots = [HostSlot(h.name, DIR, FakeTransport(h), HostTracker(h.name)) for h in hosts]
        self.scheduler = Scheduler(
            self.slots,
            self.delivery,
            timing or source_timing(interval=0.05, jitter=0.1, backoff_max=0.4),
            host_events=host_events,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def _consume(self) -> None:
        while True:
            ev = await self.queue.get()
            self.events.append(ev)
            if self.feedback is not None and self.ack:
                await self.feedback.put(ev)

    async def __aenter__(self) -> Watching:
        await self.checkpoint.load()
        await self.delivery.start()
        self._tasks = [
            asyncio.create_task(self.scheduler.run()),
            asyncio.create_task(self._consume()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.delivery.stop()
        await self.checkpoint.close()

    def jobs(self, status: str | None = None) -> list[tuple[str, str, str]]:
        out = [
            (e["async_job"]["host"], e["async_job"]["jid"], e["async_job"]["status"])
            for e in self.events
            if "async_job" in e
        ]
        return [o for o in out if status is None or o[2] == status]
