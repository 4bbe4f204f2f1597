"""This machine's own async dir (``connection: local``), read with aiofiles.

It answers the same question as the PSRP poll script, so the tracker cannot tell the two apart:
only new or changed files are read (whole: a local file needs no ``MaxBytes`` summary), and processes are looked up before the files are listed.
POSIX job files carry no watchdog pid, so here ``lost`` comes from a reboot or ``lost_after``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import aiofiles
import aiofiles.os

from ..model import is_job_name
from .base import FileEntry, FileKey, PollRequest, Snapshot, TransportError

LOGGER = logging.getLogger(__name__)
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class LocalTransport:
    """Polls a directory on this machine."""

    def __init__(self, host_name: str) -> None:
        self.host_name = host_name

    async def poll(self, request: PollRequest) -> Snapshot:
        now_ms = _now_ms()
        boot_ms = await _boot_ms()
        procs = {pid: await _process_start_ms(pid, boot_ms) for pid in request.pids}
        directory = _expand(request.async_dir)
        try:
            names = await aiofiles.os.listdir(directory)
        except FileNotFoundError:
            return Snapshot(str(directory), False, now_ms, boot_ms, (), list(request.known), procs)
        except OSError as exc:
            raise TransportError(
                f"{self.host_name}: cannot list {directory}: {exc.strerror}"
            ) from None
        only = set(request.only)
        present = {n for n in names if is_job_name(n) and (not only or n in only)}
        changed = [
            entry
            for name in sorted(present)
            if (entry := await _read_if_changed(directory / name, request)) is not None
        ]
        gone = [n for n in request.known if n not in present]
        gone += [e.name for e in changed if e.error == "gone"]
        changed = [e for e in changed if e.error != "gone"]
        return Snapshot(str(directory), True, now_ms, boot_ms, changed, gone, procs)

    async def close(self) -> None:
        """Nothing to release."""


async def _read_if_changed(path: Path, request: PollRequest) -> FileEntry | None:
    try:
        st = await aiofiles.os.stat(path)
    except FileNotFoundError:
        return FileEntry(path.name, 0, 0, error="gone")
    key = FileKey(st.st_size, st.st_mtime_ns // 1_000_000)
    if request.known.get(path.name) == key:
        return None
    ctime_ms = _birth_ms(st)
    try:
        async with aiofiles.open(path, "rb") as fh:
            content = await fh.read()
    except FileNotFoundError:
        return FileEntry(path.name, 0, 0, error="gone")
    except OSError as exc:
        return FileEntry(
            path.name, key.size, key.mtime_ms, ctime_ms, error=exc.strerror or "read error"
        )
    return FileEntry(path.name, key.size, key.mtime_ms, ctime_ms, content=content)


def _expand(async_dir: str) -> Path:
    """``~`` and ``$VAR`` as ansible expands ANSIBLE_ASYNC_DIR (no disk access)."""
    return Path(os.path.expandvars(os.path.expanduser(async_dir)))


def _birth_ms(st: os.stat_result) -> int | None:
    birth = getattr(st, "st_birthtime", None)
    return int(birth * 1000) if birth is not None else None


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _boot_ms() -> int | None:
    try:
        async with aiofiles.open("/proc/stat") as fh:
            text = await fh.read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("btime "):
            return int(line.split()[1]) * 1000
    return None


async def _process_start_ms(pid: int, boot_ms: int | None) -> int | None:
    """Start time of ``pid`` in ms, -1 when it runs but the start is unknown, None when gone."""
    try:
        async with aiofiles.open(f"/proc/{pid}/stat") as fh:
            text = await fh.read()
    except FileNotFoundError:
        return None
    except OSError:
        return -1
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = text.rsplit(")", 1)[-1].split()
    if boot_ms is None or len(fields) < 20:
        return -1
    return boot_ms + int(fields[19]) * 1000 // _CLK_TCK
