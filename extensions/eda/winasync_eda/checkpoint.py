"""What was delivered, kept on disk so that a restart emits neither less nor more.

Two places to keep it: a file (``state_file``, this module) or a PostgreSQL table
(``checkpoint_db``, a :class:`CheckpointStore` from ``checkpoint_pg.py``), which gets only the
changes since its last save. The file is small JSON, rewritten whole with write-to-temp + fsync + rename, so a crash leaves
either the old or the new version, never a torn one. An entry is dropped once its job file is
gone from the host: from then on nothing could emit it again anyway.

Beside the outcomes it keeps each host's open WinRM shells (``shells``), written as soon as a
pool opens: a killed source cannot delete them, so the next start does (by ShellId) before
the host's MaxShellsPerUser fills up with one leftover per restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import aiofiles
import aiofiles.os

LOGGER = logging.getLogger(__name__)
FORMAT_VERSION = 1

# host -> jid -> status -> delivered at (ms since the epoch)
Delivered = dict[str, dict[str, dict[str, int]]]
# host -> ids of the shells this source has open there (or failed to delete)
Shells = dict[str, frozenset[str]]


class CheckpointError(Exception):
    """The state file exists but cannot be used; starting blind would repeat every event."""


@dataclass
class Changes:
    """What changed since the last save: jobs forgotten (deleted first), outcomes recorded."""

    removed: set[tuple[str, str]] = field(default_factory=set)
    upserts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # host -> its open shells now (an empty set: none left)
    shells: Shells = field(default_factory=dict)

    def merge_newer(self, newer: Changes) -> None:
        for host, jid in newer.removed:
            self.remove(host, jid)
        for key, at in newer.upserts.items():
            self.upserts[key] = at
        self.shells.update(newer.shells)

    def remove(self, host: str, jid: str) -> None:
        self.removed.add((host, jid))
        for key in [k for k in self.upserts if k[:2] == (host, jid)]:
            del self.upserts[key]


class CheckpointStore(Protocol):
    """A place other than the file: loaded whole once, then saved change by change."""

    async def load(self) -> Delivered: ...

    async def load_shells(self) -> Shells: ...

    async def save(self, changes: Changes) -> None: ...

    async def close(self) -> None: ...


class Checkpoint:
    """Delivered (host, jid, status) triples; in memory only when neither a path nor a store
    is given."""

    def __init__(self, path: Path | None, store: CheckpointStore | None = None) -> None:
        self.path = path
        self.store = store
        self._delivered: Delivered = {}
        self._shells: Shells = {}
        self._dirty = False
        self._changes = Changes()
        self._write_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def persistent(self) -> bool:
        """True when the checkpoint outlives the process (a file or a store)."""
        return self.path is not None or self.store is not None

    async def load(self) -> None:
        if self.store is not None:
            self._delivered = await self.store.load()
            self._shells = await self.store.load_shells()
            return
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
        self._delivered, self._shells = _parse(raw, self.path)
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
        self._changes.upserts[(host, jid, status)] = at_ms
        self._dirty = True

    def prune(self, host: str, present: AbstractSet[str]) -> None:
        """Forget the jobs of ``host`` whose file is no longer there."""
        jobs = self._delivered.get(host)
        if not jobs:
            return
        for jid in [j for j in jobs if j not in present]:
            del jobs[jid]
            self._changes.remove(host, jid)
            self._dirty = True
        if not jobs:
            del self._delivered[host]

    def shells(self) -> Shells:
        """Each host's shells as the last life left them (or as this one reported them)."""
        return dict(self._shells)

    def set_shells(self, host: str, shell_ids: AbstractSet[str]) -> None:
        """A host's open shells changed: written soon, without waiting for the next event (a
        kill before the next poll ends would otherwise lose a shell just opened)."""
        ids = frozenset(shell_ids)
        if self._shells.get(host, frozenset()) == ids:
            return
        if ids:
            self._shells[host] = ids
        else:
            self._shells.pop(host, None)
        self._changes.shells[host] = ids
        self._dirty = True
        if self.persistent and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_soon(), name="async_jobs-checkpoint-shells"
            )

    async def _flush_soon(self) -> None:
        """Flush until nothing is left (hosts that open pools together share the writes)."""
        try:
            while self._dirty:
                await self.flush()
        except Exception as exc:  # the next flush after an event tries again
            LOGGER.warning(
                "checkpoint: recording the open shells failed (%s): tried again later",
                type(exc).__name__,
            )

    async def flush(self) -> None:
        """Write the file if anything changed since the last write."""
        async with self._write_lock:
            if (self.path is None and self.store is None) or not self._dirty:
                return
            self._dirty = False
            changes, self._changes = self._changes, Changes()
            try:
                if self.store is not None:
                    await self.store.save(changes)
                else:
                    assert self.path is not None
                    await self._write(self.path)
            except BaseException:
                self._dirty = True
                changes.merge_newer(self._changes)
                self._changes = changes
                raise

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self.store is not None:
            await self.store.close()

    async def _write(self, path: Path) -> None:
        shells = {host: sorted(ids) for host, ids in self._shells.items()}
        data = json.dumps(
            {"version": FORMAT_VERSION, "delivered": self._delivered, "shells": shells},
            sort_keys=True,
        ).encode()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        await aiofiles.os.makedirs(path.parent, exist_ok=True)
        async with aiofiles.open(tmp, "wb") as fh:
            await fh.write(data)
            await fh.flush()
            await aiofiles.os.wrap(os.fsync)(fh.fileno())
        await aiofiles.os.replace(tmp, path)


def _parse(raw: bytes, path: Path) -> tuple[Delivered, Shells]:
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
    # "shells" came later: a file without it has none recorded
    shells = doc.get("shells", {})
    ok = (
        ok
        and isinstance(shells, dict)
        and all(
            isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            for ids in shells.values()
        )
    )
    if not ok:
        raise CheckpointError(f"state_file: {path} has an unexpected layout")
    return cast(Delivered, delivered), {host: frozenset(ids) for host, ids in shells.items() if ids}
