"""Scripted async jobs: what ansible's async wrapper and watchdog do on a Windows host, on a timer.

A job writes its initial file at once, with a freshly spawned watchdog pid, then after its
duration writes the final result (not atomically) and its watchdog exits. An ``orphaned`` job's
watchdog dies instead and the file stays unfinished, as after a crash; a reboot kills every job
before its final write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from winsim import jobfiles
from winsim.jobfiles import Generation, WriteStep

if TYPE_CHECKING:
    from winsim.host import SimHost

log = logging.getLogger(__name__)

Outcome = Literal["finished", "failed", "timed_out", "orphaned"]
OUTCOMES: tuple[Outcome, ...] = ("finished", "failed", "timed_out", "orphaned")
Phase = Literal["running", "writing-empty", "writing-partial", "done", "orphaned", "killed"]
ENDED: frozenset[Phase] = frozenset({"done", "orphaned", "killed"})

JOB_NAME_RE = re.compile(r"^j[0-9]{1,12}\.[0-9]+$")
_JID_ONLY_RE = re.compile(r"^j[0-9]{1,12}$")
FAILED_MSG = "non-zero return code"


DEFAULT_ASYNC_DIR = r"%USERPROFILE%\.ansible_async"


@dataclass(frozen=True)
class WriteControl:
    """How the final write unfolds: a pause at each intermediate step, or a hold until stepped."""

    pause_s: float = 0.0
    hold: bool = False
    partial_fraction: float = 0.5


@dataclass(frozen=True)
class JobSpec:
    outcome: Outcome = "finished"
    duration_s: float = 1.0
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    msg: str | None = None
    generation: Generation = "2.19-ps51"
    jid: str | None = None
    timeout_s: float | None = None
    cmd: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    async_dir: str = DEFAULT_ASYNC_DIR
    write: WriteControl | None = None
    lock_while_writing: bool = False

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}: {self.outcome!r}")
        if self.generation not in jobfiles.GENERATIONS:
            raise ValueError(f"unknown generation {self.generation!r}")
        if self.outcome == "finished" and self.rc not in (None, 0):
            raise ValueError("a finished job has rc 0; use outcome 'failed' for another rc")
        if self.duration_s < 0 or (self.timeout_s is not None and self.timeout_s < 0):
            raise ValueError("durations must not be negative")


class ScriptedJob:
    """One job's life; read its fields from any thread, change it only on the host's loop."""

    def __init__(
        self, host: SimHost, spec: JobSpec, jid: str, path: Path, results_file: str
    ) -> None:
        self.host = host
        self.spec = spec
        self.jid = jid
        self.path = path
        self.results_file = results_file
        self.generation: Generation = spec.generation
        self.watchdog_pid = host.spawn_process()
        self.started_ms = host.now_ms()
        self.phase: Phase = "running"
        self.initial = jobfiles.initial_record(
            jid, results_file, self.watchdog_pid, spec.generation
        )
        self.final: dict[str, Any] | None = None
        # set once the job ended in any way; a threading.Event so other threads can wait
        self.ended = threading.Event()
        self._ended_async = asyncio.Event()
        self._wake = asyncio.Event()
        self._steps = asyncio.Semaphore(0)
        self._task: asyncio.Task[None] | None = None

    # -- what the host and the tests see ------------------------------------------------------

    @property
    def initial_bytes(self) -> bytes:
        return jobfiles.encode_initial(self.initial, self.generation)

    def is_locked_for(self, win_path_folded: str) -> bool:
        return (
            self.spec.lock_while_writing
            and self.phase in ("writing-empty", "writing-partial")
            and win_path_folded == self.results_file.casefold()
        )

    async def wait(self, timeout_s: float) -> None:
        """Wait on the host's loop until the job ended."""
        await asyncio.wait_for(self._ended_async.wait(), timeout_s)

    def step(self) -> None:
        """Permit one held write step (see ``WriteControl.hold``)."""
        self._steps.release()

    def end_now(self) -> None:
        """Cut the job's duration short: it goes on to its outcome at once."""
        self._wake.set()

    def kill(self, phase: Literal["killed", "orphaned"] = "killed") -> None:
        """The watchdog dies (reboot, crash): no final write, whatever step it is at."""
        if self.phase in ENDED:
            return
        self.host.kill_process(self.watchdog_pid)
        self._end(phase)
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # -- the job's own course -----------------------------------------------------------------

    def _end(self, phase: Phase) -> None:
        self.phase = phase
        self.ended.set()
        self._ended_async.set()

    async def _between(self, step: WriteStep) -> None:
        self.phase = "writing-empty" if step == "empty" else "writing-partial"
        control = self.spec.write
        if control is None:
            await asyncio.sleep(0)
            return
        if control.pause_s > 0:
            await asyncio.sleep(control.pause_s)
        if control.hold:
            await self._steps.acquire()

    def _write(self, data: bytes) -> None:
        self.host.write_file(self.path, data)

    def _timing(self) -> tuple[float, bool]:
        """(seconds until the watchdog acts, whether it times out)."""
        spec = self.spec
        if spec.outcome == "timed_out":
            return (spec.timeout_s if spec.timeout_s is not None else spec.duration_s), True
        if spec.timeout_s is not None and spec.timeout_s < spec.duration_s:
            return spec.timeout_s, spec.outcome != "orphaned"
        return spec.duration_s, False

    async def run(self) -> None:
        wait_s, times_out = self._timing()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            if self.spec.outcome == "orphaned" and not times_out:
                self.host.kill_process(self.watchdog_pid)
                self._end("orphaned")
                log.info("job %s on %s orphaned", self.jid, self.host.name)
                return
            if times_out:
                record = jobfiles.timeout_record(self.initial, self.generation)
            else:
                record = jobfiles.final_record(
                    self.initial, self.module_result(self.host.now_ms()), self.generation
                )
            control = self.spec.write or WriteControl()
            await jobfiles.write_nonatomic(
                self._write,
                jobfiles.encode_final(record, self.generation),
                between=self._between,
                partial_fraction=control.partial_fraction,
            )
            self.final = record
            self.host.kill_process(self.watchdog_pid)
            self._end("done")
            log.info("job %s on %s wrote its final result", self.jid, self.host.name)
        except asyncio.CancelledError:
            if self.phase not in ENDED:
                self._end("killed")
            raise

    def module_result(self, end_ms: int) -> dict[str, Any]:
        """What ``win_shell`` returns for this job (``FailJson`` adds failed and msg)."""
        spec = self.spec
        failed = spec.outcome == "failed"
        rc = spec.rc if spec.rc is not None else (1 if failed else 0)
        start = datetime.fromtimestamp(self.started_ms / 1000, UTC)
        end = datetime.fromtimestamp(max(end_ms, self.started_ms) / 1000, UTC)
        result: dict[str, Any] = {
            "changed": True,
            "cmd": spec.cmd if spec.cmd is not None else f"Start-Sleep -Seconds {spec.duration_s}",
            "stdout": spec.stdout,
            "stderr": spec.stderr,
            "rc": rc,
            "start": _ps_datetime(start),
            "end": _ps_datetime(end),
            "delta": _ps_timespan(end - start),
        }
        if failed:
            result["failed"] = True
            result["msg"] = spec.msg if spec.msg is not None else FAILED_MSG
        elif spec.msg is not None:
            result["msg"] = spec.msg
        result.update(spec.result)
        return result


def _ps_datetime(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _ps_timespan(delta: timedelta) -> str:
    """``TimeSpan.ToString("h\\:mm\\:ss\\.ffffff")``."""
    total_us = max(int(delta.total_seconds() * 1_000_000), 0)
    seconds, micros = divmod(total_us, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}.{micros:06d}"


def make_jid(host: SimHost, jid: str | None) -> str:
    """``j<up to 12 digits>.<pid of the wrapper's process>``, as the async wrapper names it."""
    if jid is None:
        return f"j{secrets.randbelow(999999999999)}.{host.session_pid}"
    if _JID_ONLY_RE.match(jid):
        return f"{jid}.{host.session_pid}"
    if JOB_NAME_RE.match(jid):
        return jid
    raise ValueError(f"not a job id (j<digits> or j<digits>.<pid>): {jid!r}")


def start(host: SimHost, spec: JobSpec) -> ScriptedJob:
    """Write the initial file and schedule the job (call on the host's loop)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"host {host.name}: no event loop attached (start the server or attach_loop first)"
        ) from None
    expanded, local_dir = host.local_async_dir(spec.async_dir)
    if local_dir is None:
        raise ValueError(f"async dir {expanded!r} is not on this host's C: drive")
    jid = make_jid(host, spec.jid)
    if jid in host.jobs and host.jobs[jid].phase not in ENDED:
        raise ValueError(f"job {jid} is already running on {host.name}")
    results_file = f"{expanded.rstrip(chr(92))}\\{jid}"
    job = ScriptedJob(host, spec, jid, local_dir / jid, results_file)
    local_dir.mkdir(parents=True, exist_ok=True)
    host.write_file(job.path, job.initial_bytes)
    host.jobs[jid] = job
    job._task = loop.create_task(job.run(), name=f"winsim-job-{host.name}-{jid}")
    log.info("job %s started on %s (%s, %ss)", jid, host.name, spec.outcome, spec.duration_s)
    return job
