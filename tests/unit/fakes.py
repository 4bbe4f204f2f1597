"""An in-memory host for the scheduler and delivery tests (one unit: no network, no disk), and
the settings of one PSRP host for the settings and transport tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from winasync_eda.secret import Secret
from winasync_eda.settings import HostSettings
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
