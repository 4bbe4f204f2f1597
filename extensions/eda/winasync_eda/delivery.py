"""Putting events on the queue exactly once, across restarts.

An outcome is recorded in the checkpoint only after it left: after ``queue.put`` returned, or,
with ``feedback``, after ansible-rulebook acknowledged it. A crash between the two repeats that
one event at the next start (at least once, never lost); ``redeliver_after`` re-sends an
outcome whose job file is still there long after, because the follow-up that should have
removed it never ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from .checkpoint import Checkpoint
from .events import build_host_event, build_job_event
from .model import Status
from .tracker import Finding, HostTracker

LOGGER = logging.getLogger(__name__)
FINAL = frozenset({Status.FINISHED, Status.FAILED, Status.TIMED_OUT, Status.LOST})
FEEDBACK_TIMEOUT_S = 120.0


def now_ms() -> int:
    return int(time.time() * 1000)


class Delivery:
    """Owns the queue side: filtering by ``emit``, de-duplication, acknowledgements."""

    def __init__(
        self,
        queue: asyncio.Queue[Any],
        checkpoint: Checkpoint,
        *,
        emit: frozenset[Status],
        max_output_bytes: int,
        redeliver_after_s: float | None = None,
        feedback_queue: asyncio.Queue[Any] | None = None,
        feedback_timeout_s: float = FEEDBACK_TIMEOUT_S,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.queue = queue
        self.checkpoint = checkpoint
        self.emit = emit
        self.max_output_bytes = max_output_bytes
        self.redeliver_after_ms = (
            None if redeliver_after_s is None else int(redeliver_after_s * 1000)
        )
        self.feedback_queue = feedback_queue
        self.feedback_timeout_s = feedback_timeout_s
        self.clock = clock
        self.emitted = 0
        self._acks: dict[str, asyncio.Future[None]] = {}
        # per host: findings not acknowledged in time, sent again after the next poll
        self._unacked: dict[str, list[Finding]] = {}
        self._ack_task: asyncio.Task[None] | None = None
        # one event on the queue at a time, so each host's order holds and acks pair up
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self.feedback_queue is not None and self._ack_task is None:
            self._ack_task = asyncio.create_task(self._read_acks(), name="async_jobs-feedback")

    async def stop(self) -> None:
        if self._ack_task is not None:
            self._ack_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ack_task
            self._ack_task = None
        await self.checkpoint.flush()

    async def deliver(
        self, host: str, async_dir: str, tracker: HostTracker, findings: list[Finding]
    ) -> int:
        """Emit what is due for one host after a poll; return how many events left."""
        sent = 0
        # outcomes the engine did not acknowledge last time go first, still in their order
        # (unless the job file is gone since: nothing is left to follow up)
        retry = [
            f
            for f in self._unacked.pop(host, [])
            if f.jid in tracker.present or f.status == Status.VANISHED
        ]
        due = retry + findings
        for i, f in enumerate(due):
            if f.status not in self.emit or self.checkpoint.delivered_at(host, f.jid, f.status):
                continue
            if await self._send_job(host, async_dir, tracker, f):
                sent += 1
            else:
                self._unacked[host] = [x for x in due[i:] if x.status in self.emit]
                break
        if tracker.complete:
            self.checkpoint.prune(host, tracker.present)
        sent += await self._redeliver(host, async_dir, tracker)
        await self.checkpoint.flush()
        return sent

    async def host_event(self, host: str, status: str, error: str | None) -> None:
        event = build_host_event(host=host, status=status, error=error, detected_at_ms=self.clock())
        async with self._lock:
            await self._put(event)

    async def _redeliver(self, host: str, async_dir: str, tracker: HostTracker) -> int:
        if self.redeliver_after_ms is None:
            return 0
        sent = 0
        now = self.clock()
        for jid in sorted(tracker.present):
            for status in sorted(FINAL & self.emit):
                at = self.checkpoint.delivered_at(host, jid, status)
                if at is None or now - at < self.redeliver_after_ms:
                    continue
                LOGGER.info(
                    "%s: %s is still there %d s after its %s event: delivering it again",
                    host,
                    jid,
                    (now - at) // 1000,
                    status,
                )
                record = tracker.record_of(jid)
                finding = Finding(jid, status, record, tracker.modified_at(jid))
                if await self._send_job(host, async_dir, tracker, finding, redelivery_of=at):
                    sent += 1
        return sent

    async def _send_job(
        self,
        host: str,
        async_dir: str,
        tracker: HostTracker,
        f: Finding,
        *,
        redelivery_of: int | None = None,
    ) -> bool:
        results_dir = tracker.results_dir or async_dir
        sep = "\\" if "\\" in results_dir else "/"
        event = build_job_event(
            host=host,
            jid=f.jid,
            status=f.status,
            record=f.record,
            results_file=f"{results_dir.rstrip(sep)}{sep}{f.jid}",
            async_dir=async_dir,
            modified_at_ms=f.modified_at_ms,
            detected_at_ms=self.clock(),
            max_output_bytes=self.max_output_bytes,
            reason=f.reason,
        )
        event["async_job"]["redelivered"] = redelivery_of is not None
        if redelivery_of is not None:
            # A new uuid per redelivery: an engine with persistence drops an event whose uuid
            # it has already seen, which would defeat the point of sending it again.
            base = str(event["meta"]["uuid"])
            event["meta"]["uuid"] = str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"{base}/redelivery/{redelivery_of}")
            )
        async with self._lock:
            if not await self._put(event):
                return False
            self.checkpoint.record(host, f.jid, f.status, self.clock())
            await self.checkpoint.flush()
        self.emitted += 1
        LOGGER.info("%s: %s %s", host, f.jid, f.status)
        return True

    async def _put(self, event: dict[str, Any]) -> bool:
        event_id = str(event["meta"]["uuid"])
        if self.feedback_queue is None:
            await self.queue.put(event)
            return True
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[event_id] = ack
        try:
            await self.queue.put(event)
            await asyncio.wait_for(ack, self.feedback_timeout_s)
            return True
        except TimeoutError:
            LOGGER.warning(
                "no acknowledgement for event %s within %.0f s: not recorded, sent again later",
                event_id,
                self.feedback_timeout_s,
            )
            return False
        finally:
            self._acks.pop(event_id, None)

    async def _read_acks(self) -> None:
        assert self.feedback_queue is not None
        while True:
            data = await self.feedback_queue.get()
            event_id = None
            if isinstance(data, dict) and isinstance(data.get("meta"), dict):
                event_id = data["meta"].get("uuid")
            fut = self._acks.get(str(event_id)) if event_id is not None else None
            if fut is not None and not fut.done():
                fut.set_result(None)
            else:
                LOGGER.debug("acknowledgement for an event not awaited: %s", event_id)
