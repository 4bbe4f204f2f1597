"""What is new on one host: turns successive snapshots into job outcomes (findings).

The tracker remembers, per job file, what was last parsed, so that the next poll asks only for
what changed (``Known``) and for the watchdog processes of running jobs (``Pids``). It decides
``lost`` and ``vanished``, which no single file can tell; ``classify`` decides the rest.
Nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from .classify import DEFAULT_ANSI_ENCODING, JobRecord, ansi_encoding, parse_job_file, parse_summary
from .model import Status
from .transports.base import FileEntry, FileKey, PollRequest, Snapshot

LOGGER = logging.getLogger(__name__)

# Polls in a row that must see a watchdog gone before a job is called lost: the watchdog may
# have written its result and exited between the process check and the read.
DEAD_CONFIRMATIONS = 2
# A job file that stays unparsable with the same size and time this many polls is treated as
# known (not re-read every cycle) until it changes; the tracker warns once.
UNPARSABLE_LIMIT = 5
# Slack between a process' start and the job file's creation when checking for pid reuse.
PID_REUSE_SLACK_MS = 2000


@dataclass(frozen=True)
class Finding:
    """A status a job reached, seen in one poll."""

    jid: str
    status: Status
    record: JobRecord | None
    modified_at_ms: int | None
    reason: str | None = None


@dataclass
class _Job:
    key: FileKey | None = None
    ctime_ms: int | None = None
    record: JobRecord | None = None
    dead_polls: int = 0
    unparsable: int = 0
    unparsable_key: FileKey | None = None
    reported: set[Status] = field(default_factory=set)


class HostTracker:
    """The jobs of one host; fed one snapshot at a time, in order."""

    def __init__(
        self,
        host: str,
        *,
        only: frozenset[str] | None = None,
        lost_after_ms: int | None = None,
    ) -> None:
        self.host = host
        self.only = only
        self.lost_after_ms = lost_after_ms
        self.results_dir: str | None = None
        # the codec of the host's ANSI code page, for 2.15-2.18 files (cp1252 until told)
        self.ansi_encoding = DEFAULT_ANSI_ENCODING
        self._jobs: dict[str, _Job] = {}
        self._complete = False
        # the watchdog states of the last answer (pid -> start ms, -1, None): a waiting poll
        # sends them, and the host answers once one differs
        self._procs: dict[int, int | None] = {}

    @property
    def present(self) -> AbstractSet[str]:
        """Job files on the host as of the last poll (complete after the first one); a live
        view, not a copy: it is read after every poll."""
        return self._jobs.keys()

    @property
    def complete(self) -> bool:
        return self._complete

    def counts(self) -> tuple[int, int]:
        """(job files seen, of which running)."""
        running = sum(
            1 for j in self._jobs.values() if j.record is not None and not j.record.finished
        )
        return len(self._jobs), running

    @property
    def settled(self) -> bool:
        """Nothing to confirm or read again at once: a waiting poll may wait. Not settled
        before the first answer, while a file could not be read or parsed, or while a
        watchdog seen gone once awaits its confirming poll."""
        return self._complete and all(
            j.key is not None and (j.dead_polls == 0 or Status.LOST in j.reported)
            for j in self._jobs.values()
        )

    def request(
        self,
        async_dir: str,
        max_bytes: int,
        max_answer_bytes: int = 4 * 1024 * 1024,
        wait_s: float = 0.0,
    ) -> PollRequest:
        known = {n: j.key for n, j in self._jobs.items() if j.key is not None}
        pids = sorted(
            {
                j.record.watchdog_pid
                for j in self._jobs.values()
                if j.record is not None and not j.record.finished and j.record.watchdog_pid
            }
        )
        return PollRequest(
            async_dir=async_dir,
            known=known,
            pids=pids,
            only=sorted(self.only) if self.only else (),
            max_bytes=max_bytes,
            max_answer_bytes=max_answer_bytes,
            wait_s=wait_s,
            seen_procs={pid: self._procs[pid] for pid in pids if pid in self._procs}
            if wait_s > 0
            else {},
        )

    def record_of(self, jid: str) -> JobRecord | None:
        job = self._jobs.get(jid)
        return job.record if job else None

    def modified_at(self, jid: str) -> int | None:
        job = self._jobs.get(jid)
        return job.key.mtime_ms if job and job.key else None

    def apply(self, snap: Snapshot) -> list[Finding]:
        """Fold one snapshot in; return the statuses reached, in the order seen."""
        self.results_dir = snap.results_dir
        self.ansi_encoding = ansi_encoding(snap.ansi_codepage)
        findings: list[Finding] = []
        gone = [n for n in snap.gone if n in self._jobs] if snap.exists else list(self._jobs)
        for name in gone:
            job = self._jobs.pop(name)
            if (
                job.record is not None
                and not job.record.finished
                and not (job.reported & {Status.LOST, Status.VANISHED})
            ):
                findings.append(
                    Finding(
                        name,
                        Status.VANISHED,
                        job.record,
                        job.key.mtime_ms if job.key else None,
                        "the job file was removed before the job finished",
                    )
                )
        for entry in snap.changed:
            if self.only and entry.name not in self.only:
                continue
            finding = self._read(entry)
            if finding is not None:
                findings.append(finding)
        for name in snap.deferred:
            # present, but left for the next polls: a new one is known by name only until read
            if not self.only or name in self.only:
                self._jobs.setdefault(name, _Job())
        findings.extend(self._lost(snap))
        self._procs = dict(snap.procs)
        self._complete = True
        return findings

    def _read(self, entry: FileEntry) -> Finding | None:
        job = self._jobs.setdefault(entry.name, _Job())
        job.ctime_ms = entry.ctime_ms if entry.ctime_ms is not None else job.ctime_ms
        if entry.error is not None:
            LOGGER.debug(
                "%s: %s not readable now (%s): read again next poll",
                self.host,
                entry.name,
                entry.error,
            )
            job.key = None
            return None
        record: JobRecord | None
        if entry.content is not None:
            record = parse_job_file(entry.content, ansi_encoding=self.ansi_encoding)
        elif entry.summary is not None:
            record = parse_summary(entry.summary)
        else:
            record = None
        if record is None:
            job.unparsable = job.unparsable + 1 if job.unparsable_key == entry.key else 1
            job.unparsable_key = entry.key
            if job.unparsable < UNPARSABLE_LIMIT:
                job.key = None  # empty or half-written: ask for it again next poll
                return None
            if job.unparsable == UNPARSABLE_LIMIT:
                LOGGER.warning(
                    "%s: job file %s stays unparsable (%d bytes): not read again until it changes",
                    self.host,
                    entry.name,
                    entry.size,
                )
            job.key = entry.key
            return None
        job.unparsable = 0
        job.key = entry.key
        changed_state = job.record is None or job.record.status != record.status
        job.record = record
        if not record.finished:
            job.dead_polls = 0
        if not changed_state:
            return None
        status = record.status
        if status in job.reported:
            return None
        job.reported.add(status)
        return Finding(entry.name, status, record, entry.mtime_ms)

    def _lost(self, snap: Snapshot) -> list[Finding]:
        out: list[Finding] = []
        for name, job in self._jobs.items():
            rec = job.record
            if rec is None or rec.finished or Status.LOST in job.reported or job.key is None:
                continue
            reason = self._lost_reason(job, rec, snap)
            if reason is not None:
                job.reported.add(Status.LOST)
                out.append(Finding(name, Status.LOST, rec, job.key.mtime_ms, reason))
        return out

    def _lost_reason(self, job: _Job, rec: JobRecord, snap: Snapshot) -> str | None:
        assert job.key is not None
        if snap.boot_ms is not None and job.key.mtime_ms < snap.boot_ms:
            return "the host rebooted after the job file was last written"
        pid = rec.watchdog_pid
        if pid and pid in snap.procs:
            started = snap.procs[pid]
            created = job.ctime_ms if job.ctime_ms is not None else job.key.mtime_ms
            if started is None or (started >= 0 and started > created + PID_REUSE_SLACK_MS):
                job.dead_polls += 1
                if job.dead_polls >= DEAD_CONFIRMATIONS:
                    if started is None:
                        return (
                            f"the job's watchdog process {pid} is gone without writing a result:"
                            " it died, or its final write failed because a reader held the job"
                            " file open (Windows fails Set-Content then)"
                        )
                    return f"the job's watchdog pid {pid} now belongs to a newer process"
            else:
                job.dead_polls = 0
        if self.lost_after_ms is not None:
            born = job.ctime_ms if job.ctime_ms is not None else job.key.mtime_ms
            if snap.now_ms - born > self.lost_after_ms:
                return f"still running after lost_after ({self.lost_after_ms // 1000} s)"
        return None
