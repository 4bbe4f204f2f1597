"""The tracker: what a sequence of snapshots means for each job."""

from __future__ import annotations

import json

from winasync_eda.model import Status
from winasync_eda.tracker import DEAD_CONFIRMATIONS, UNPARSABLE_LIMIT, HostTracker
from winasync_eda.transports.base import FileEntry, Snapshot

DIR = "C:\\Users\\ansible\\.ansible_async"
JID = "j123456789012.3456"


def entry(content: bytes, mtime: int, *, ctime: int = 1_000, error: str | None = None) -> FileEntry:
    return FileEntry(
        JID, len(content), mtime, ctime, content=None if error else content, error=error
    )


def snap(
    *changed: FileEntry,
    gone: tuple[str, ...] = (),
    procs: dict[int, int | None] | None = None,
    boot: int = 0,
    now: int = 10_000,
    exists: bool = True,
) -> Snapshot:
    return Snapshot(DIR, exists, now, boot, list(changed), list(gone), procs or {})


RUNNING = json.dumps(
    {"started": 1, "finished": 0, "ansible_job_id": JID, "ansible_async_watchdog_pid": 77}
).encode()
DONE = json.dumps(
    {"started": 1, "finished": 1, "ansible_job_id": JID, "rc": 0, "changed": True}
).encode()
FAILED = json.dumps(
    {"started": True, "finished": True, "failed": True, "rc": 3, "msg": "boom"}
).encode()


def statuses(findings: list) -> list[Status]:  # type: ignore[type-arg]
    return [f.status for f in findings]


def test_running_then_finished_once() -> None:
    t = HostTracker("win01")
    assert statuses(t.apply(snap(entry(RUNNING, 2_000)))) == [Status.RUNNING]
    req = t.request(DIR, 1024)
    assert req.known[JID].mtime_ms == 2_000 and req.pids == [77]
    assert t.apply(snap(procs={77: 1_000})) == []
    assert statuses(t.apply(snap(entry(DONE, 3_000)))) == [Status.FINISHED]
    assert t.request(DIR, 1024).pids == []
    # the same content again (e.g. after a touch) is no new outcome
    assert t.apply(snap(entry(DONE, 4_000))) == []


def test_half_written_file_is_read_again_not_reported() -> None:
    t = HostTracker("win01")
    assert t.apply(snap(entry(b"", 2_000))) == []
    assert JID not in t.request(DIR, 1024).known
    assert t.apply(snap(entry(b'{"started": 1, "fini', 2_001))) == []
    assert JID not in t.request(DIR, 1024).known
    assert statuses(t.apply(snap(entry(FAILED, 2_002)))) == [Status.FAILED]


def test_sharing_violation_is_read_again() -> None:
    t = HostTracker("win01")
    assert t.apply(snap(entry(RUNNING, 2_000, error="being used by another process"))) == []
    assert JID not in t.request(DIR, 1024).known


def test_file_that_never_parses_stops_being_reread_until_it_changes() -> None:
    t = HostTracker("win01")
    for _ in range(UNPARSABLE_LIMIT):
        assert t.apply(snap(entry(b"garbage", 2_000))) == []
    assert t.request(DIR, 1024).known[JID].mtime_ms == 2_000
    assert statuses(t.apply(snap(entry(DONE, 2_500)))) == [Status.FINISHED]


def test_watchdog_gone_is_lost_after_confirmation() -> None:
    t = HostTracker("win01")
    t.apply(snap(entry(RUNNING, 2_000)))
    for _ in range(DEAD_CONFIRMATIONS - 1):
        assert t.apply(snap(procs={77: None})) == []
    found = t.apply(snap(procs={77: None}))
    assert statuses(found) == [Status.LOST]
    assert found[0].reason is not None and "77" in found[0].reason
    assert t.apply(snap(procs={77: None})) == []


def test_watchdog_back_alive_resets_confirmation() -> None:
    t = HostTracker("win01")
    t.apply(snap(entry(RUNNING, 2_000)))
    assert t.apply(snap(procs={77: None})) == []
    assert t.apply(snap(procs={77: 900})) == []
    assert t.apply(snap(procs={77: None})) == []


def test_pid_reused_by_newer_process_is_lost() -> None:
    t = HostTracker("win01")
    t.apply(snap(entry(RUNNING, 2_000, ctime=1_000)))
    newer = 1_000 + 60_000
    t.apply(snap(procs={77: newer}))
    assert statuses(t.apply(snap(procs={77: newer}))) == [Status.LOST]


def test_reboot_after_last_write_is_lost_at_once() -> None:
    t = HostTracker("win01")
    t.apply(snap(entry(RUNNING, 2_000)))
    found = t.apply(snap(boot=5_000))
    assert statuses(found) == [Status.LOST]
    assert "reboot" in (found[0].reason or "")


def test_finished_file_from_before_a_reboot_is_not_lost() -> None:
    t = HostTracker("win01")
    assert statuses(t.apply(snap(entry(DONE, 2_000), boot=5_000))) == [Status.FINISHED]


def test_lost_after_age() -> None:
    t = HostTracker("win01", lost_after_ms=5_000)
    t.apply(snap(entry(RUNNING, 2_000, ctime=1_000), procs={77: 900}, now=3_000))
    assert t.apply(snap(procs={77: 900}, now=5_000)) == []
    assert statuses(t.apply(snap(procs={77: 900}, now=7_000))) == [Status.LOST]


def test_removed_while_running_is_vanished_removed_after_finish_is_not() -> None:
    t = HostTracker("win01")
    t.apply(snap(entry(RUNNING, 2_000)))
    assert statuses(t.apply(snap(gone=(JID,)))) == [Status.VANISHED]
    assert t.present == set()
    t2 = HostTracker("win01")
    t2.apply(snap(entry(DONE, 2_000)))
    assert t2.apply(snap(gone=(JID,))) == []


def test_missing_directory_means_every_job_is_gone() -> None:
    t = HostTracker("win01")
    t.apply(snap(entry(RUNNING, 2_000)))
    assert statuses(t.apply(snap(exists=False))) == [Status.VANISHED]


def test_only_filter() -> None:
    t = HostTracker("win01", only=frozenset({"j1.1"}))
    assert t.apply(snap(entry(DONE, 2_000))) == []
    assert t.request(DIR, 10).only == ["j1.1"]


def test_deferred_files_are_present_unread_and_never_vanish() -> None:
    t = HostTracker("win01")
    other = "j1.2"
    first = Snapshot(DIR, True, 10_000, 0, [entry(RUNNING, 2_000)], [], {}, deferred=[other])
    assert statuses(t.apply(first)) == [Status.RUNNING]
    assert set(t.present) == {JID, other}
    # a deferred file is not known yet: the next poll reads it
    assert set(t.request(DIR, 1024, 4096).known) == {JID}
    assert t.request(DIR, 1024, 4096).max_answer_bytes == 4096
    # a known running job whose change is deferred keeps its state and is not gone
    second = Snapshot(DIR, True, 10_000, 0, [], [], {}, deferred=[JID, other])
    assert t.apply(second) == []
    assert t.record_of(JID) is not None
    assert t.counts() == (2, 1)


def test_a_watchdog_pid_past_int32_is_never_asked_for() -> None:
    t = HostTracker("win01")
    huge = json.dumps(
        {"started": 1, "finished": 0, "ansible_job_id": JID, "ansible_async_watchdog_pid": 2**31}
    ).encode()
    assert statuses(t.apply(snap(entry(huge, 2_000)))) == [Status.RUNNING]
    assert t.request(DIR, 1024).pids == []


def test_a_waiting_request_carries_the_watchdog_states_last_seen() -> None:
    t = HostTracker("win01")
    t.apply(snap(entry(RUNNING, 2_000)))
    # no state yet for pid 77: the host answers such a poll at once
    assert t.request(DIR, 1024, wait_s=50).seen_procs == {}
    t.apply(snap(procs={77: 1_000}))
    req = t.request(DIR, 1024, wait_s=50)
    assert (req.wait_s, req.seen_procs) == (50, {77: 1_000})
    # a plain poll sends none
    assert t.request(DIR, 1024).seen_procs == {}


def test_settled_only_when_nothing_waits_for_a_second_look() -> None:
    t = HostTracker("win01")
    assert not t.settled  # before the first answer
    t.apply(snap(entry(RUNNING, 2_000)))
    assert t.settled
    t.apply(snap(procs={77: None}))  # gone once: the confirming poll must not wait
    assert not t.settled
    for _ in range(DEAD_CONFIRMATIONS):
        t.apply(snap(procs={77: None}))
    assert t.settled  # reported lost: nothing left to confirm
    u = HostTracker("win02")
    u.apply(snap(entry(b'{"started": 1, "fin', 2_000)))  # half-written: read again at once
    assert not u.settled
