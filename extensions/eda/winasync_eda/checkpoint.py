"""What was delivered, kept on disk so that a restart emits neither less nor more.

The file is small JSON, rewritten whole with write-to-temp + fsync + rename, so a crash leaves
either the old or the new version, never a torn one. An entry is dropped once its job file is
gone from the host: from then on nothing could emit it again anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, cast

import aiofiles
import aiofiles.os

LOGGER = logging.getLogger(__name__)
FORMAT_VERSION = 1

# host -> jid -> status -> delivered at (ms since the epoch)
Delivered = dict[str, dict[str, dict[str, int]]]


class CheckpointError(Exception):
    """The state file exists but cannot be used; starting blind would repeat every event."""


class Checkpoint:
    """Delivered (host, jid, status) triples; in memory only when no path is given."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._delivered: Delivered = {}
        self._dirty = False
        self._write_lock = asyncio.Lock()

    async def load(self) -> None:
        if self.path is None:
            return
        await self._remove_stale_temp_files(self.path)
        try:
            async with aiofiles.open(self.path, "rb") as fh:
                raw = await fh.read()
        except FileNotFoundError:
            LOGGER.info(
                "state file %s does not exist yet: starting with an empty checkpoint", self.path
            )
            return
        except OSError as exc:
            raise CheckpointError(f"state_file: cannot read {self.path}: {exc.strerror}") from None
        self._delivered = _parse(raw, self.path)
        LOGGER.info(
            "state file %s: %d delivered outcomes on %d hosts",
            self.path,
            sum(len(s) for jobs in self._delivered.values() for s in jobs.values()),
            len(self._delivered),
        )

    @staticmethod
    async def _remove_stale_temp_files(path: Path) -> None:
        """A kill in the middle of a write leaves ``.<name>.<pid>.tmp`` behind; the state file
        itself is intact (the rename never happened)."""
        try:
            names = await aiofiles.os.listdir(path.parent)
        except OSError:
            return
        prefix = f".{path.name}."
        for name in names:
            if name.startswith(prefix) and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    await aiofiles.os.remove(path.parent / name)
                LOGGER.info("removed %s, left by an interrupted checkpoint write", name)

    def delivered_at(self, host: str, jid: str, status: str) -> int | None:
        return self._delivered.get(host, {}).get(jid, {}).get(status)

    def record(self, host: str, jid: str, status: str, at_ms: int) -> None:
        self._delivered.setdefault(host, {}).setdefault(jid, {})[status] = at_ms
        self._dirty = True

    def prune(self, host: str, present: AbstractSet[str]) -> None:
        """Forget the jobs of ``host`` whose file is no longer there."""
        jobs = self._delivered.get(host)
        if not jobs:
            return
        for jid in [j for j in jobs if j not in present]:
            del jobs[jid]
            self._dirty = True
        if not jobs:
            del self._delivered[host]

    async def flush(self) -> None:
        """Write the file if anything changed since the last write."""
        async with self._write_lock:
            if self.path is None or not self._dirty:
                return
            self._dirty = False
            try:
                await self._write(self.path)
            except BaseException:
                self._dirty = True
                raise

    async def _write(self, path: Path) -> None:
        data = json.dumps(
            {"version": FORMAT_VERSION, "delivered": self._delivered}, sort_keys=True
        ).encode()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        await aiofiles.os.makedirs(path.parent, exist_ok=True)
        async with aiofiles.open(tmp, "wb") as fh:
            await fh.write(data)
            await fh.flush()
            await aiofiles.os.wrap(os.fsync)(fh.fileno())
        await aiofiles.os.replace(tmp, path)


def _parse(raw: bytes, path: Path) -> Delivered:
    try:
        doc: Any = json.loads(raw) if raw.strip() else {"version": FORMAT_VERSION, "delivered": {}}
    except ValueError:
        raise CheckpointError(f"state_file: {path} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"state_file: {path} is not a version {FORMAT_VERSION} checkpoint")
    delivered = doc.get("delivered")
    ok = isinstance(delivered, dict) and all(
        isinstance(jobs, dict)
        and all(
            isinstance(statuses, dict) and all(isinstance(t, int) for t in statuses.values())
            for statuses in jobs.values()
        )
        for jobs in delivered.values()
    )
    if not ok:
        raise CheckpointError(f"state_file: {path} has an unexpected layout")
    return cast(Delivered, delivered)
