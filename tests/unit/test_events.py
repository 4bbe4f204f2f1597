"""The event shape of the contract, within its size bound, whatever the job file held."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from winasync_eda.classify import JobRecord, parse_job_file, parse_summary
from winasync_eda.events import (
    bound_result,
    build_host_event,
    build_job_event,
    cut_utf8,
    event_uuid,
    format_utc,
)
from winasync_eda.model import Status

CORPUS = Path(__file__).resolve().parents[1] / "data" / "jobfiles"
PACKAGE_PARENT = Path(__file__).resolve().parents[2] / "extensions" / "eda"

JOB_KEYS = [
    "host",
    "jid",
    "status",
    "finished",
    "failed",
    "rc",
    "msg",
    "changed",
    "stdout",
    "stderr",
    "truncated",
    "result",
    "results_file",
    "async_dir",
    "modified_at",
    "detected_at",
    "output_too_large",
]
MODIFIED = 1795885297000  # 2026-11-28T17:01:37Z
DETECTED = 1795885301999  # 2026-11-28T17:01:41.999Z


def _event(
    record: JobRecord | None,
    status: Status | None = None,
    *,
    max_output_bytes: int = 65536,
    reason: str | None = None,
    modified_at_ms: int | None = MODIFIED,
) -> dict[str, Any]:
    if status is None:
        assert record is not None
        status = record.status
    return build_job_event(
        host="win01",
        jid="j687253281342.17218",
        status=status,
        record=record,
        results_file="C:\\Users\\ansible\\.ansible_async\\j687253281342.17218",
        async_dir="%USERPROFILE%\\.ansible_async",
        modified_at_ms=modified_at_ms,
        detected_at_ms=DETECTED,
        max_output_bytes=max_output_bytes,
        reason=reason,
    )


def _corpus(name: str) -> JobRecord:
    record = parse_job_file((CORPUS / name).read_bytes())
    assert record is not None
    return record


def _record(result: dict[str, Any], status: Status = Status.FINISHED) -> JobRecord:
    return JobRecord(
        result=result,
        finished=status is not Status.RUNNING,
        failed=status in (Status.FAILED, Status.TIMED_OUT),
        timed_out=status is Status.TIMED_OUT,
        watchdog_pid=None,
    )


def _keys_are_str(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _keys_are_str(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_keys_are_str(v) for v in value)
    return True


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


# --- shape ----------------------------------------------------------------------------------


def test_failed_job_event_shape() -> None:
    event = _event(_corpus("win219_failed_rc.job"))
    assert list(event) == ["async_job", "meta"]
    job = event["async_job"]
    assert list(job) == JOB_KEYS
    assert job["host"] == "win01"
    assert job["jid"] == "j687253281342.17218"
    assert job["status"] == "failed"
    assert type(job["status"]) is str
    assert job["finished"] is True
    assert job["failed"] is True
    assert job["rc"] == 1
    assert job["msg"] == "non-zero return code"
    assert job["changed"] is True
    assert job["stdout"] == ""
    assert job["stderr"] == "Fehler: Zugriff verweigert\r\n"
    assert job["truncated"] is False
    assert job["result"]["rc"] == 1
    assert job["results_file"] == "C:\\Users\\ansible\\.ansible_async\\j687253281342.17218"
    assert job["async_dir"] == "%USERPROFILE%\\.ansible_async"
    assert job["modified_at"] == "2026-11-28T17:01:37Z"
    assert job["detected_at"] == "2026-11-28T17:01:41Z"
    assert event["meta"] == {
        "hosts": "win01",
        "uuid": event_uuid("win01", "j687253281342.17218", Status.FAILED),
    }


@pytest.mark.parametrize(
    ("name", "status", "finished", "failed"),
    [
        ("win218_finished.job", "finished", True, False),
        ("win218_timeout.job", "timed_out", True, True),
        ("win219_timeout.job", "timed_out", True, True),
        ("posix_timeout.job", "timed_out", True, True),
        ("win219_failed_before_finished.job", "failed", True, True),
        ("win219_running.job", "running", False, False),
    ],
)
def test_status_flags(name: str, status: str, finished: bool, failed: bool) -> None:
    job = _event(_corpus(name))["async_job"]
    assert (job["status"], job["finished"], job["failed"]) == (status, finished, failed)


def test_nulls_when_the_result_has_none() -> None:
    job = _event(_corpus("posix_timeout.job"), modified_at_ms=None)["async_job"]
    assert job["rc"] is None
    assert job["changed"] is None
    assert job["msg"] == "Timeout exceeded"
    assert job["stdout"] == ""  # strings, never null: rulebook tests on them never meet None
    assert job["stderr"] == ""
    assert job["modified_at"] is None
    running = _event(_corpus("win219_running.job"))["async_job"]
    assert running["msg"] is None


def test_windows_timeout_stdout_null_becomes_empty_string() -> None:
    job = _event(_corpus("win219_timeout.job"))["async_job"]
    assert job["stdout"] == ""
    assert job["result"]["stdout"] is None  # the result shows what the file held


def test_non_ascii_output_survives() -> None:
    assert (
        _event(_corpus("win218_finished_ansi.job"))["async_job"]["stdout"] == "Café \u2013 10 €\r\n"
    )
    assert (
        _event(_corpus("win219_finished_bom.job"))["async_job"]["stdout"] == "Grüße, 日本, 🚀\r\n"
    )


@pytest.mark.parametrize(
    ("value", "expect"),
    [(3, 3), (3.0, 3), ("3", 3), ("x", None), (True, None), (None, None), ([1], None)],
)
def test_rc_values(value: Any, expect: int | None) -> None:
    assert _event(_record({"rc": value}))["async_job"]["rc"] == expect


@pytest.mark.parametrize(
    ("value", "expect"), [(True, True), (False, False), (1, True), (0, False), ("yes", None)]
)
def test_changed_values(value: Any, expect: bool | None) -> None:
    assert _event(_record({"changed": value}))["async_job"]["changed"] is expect


def test_non_text_msg_and_stdout_become_text() -> None:
    job = _event(_record({"msg": ["a", "b"], "stdout": {"k": 1}}))["async_job"]
    assert job["msg"] == '["a", "b"]'
    assert job["stdout"] == '{"k": 1}'


# --- invocation -----------------------------------------------------------------------------


def test_invocation_is_stripped_from_the_result_only_at_the_top() -> None:
    record = _corpus("win218_finished.job")
    assert "invocation" in record.result
    result = _event(record)["async_job"]["result"]
    assert "invocation" not in result
    assert result["stdout_lines"] == ["Saturday, November 28, 2026 5:01:37 PM"]
    nested = _event(_record({"data": {"invocation": 1}, "invocation": {"module_args": {}}}))
    assert nested["async_job"]["result"] == {"data": {"invocation": 1}}


def test_record_is_not_modified() -> None:
    record = _corpus("win218_finished.job")
    before = json.dumps(record.result, sort_keys=True)
    _event(record, max_output_bytes=10)
    assert json.dumps(record.result, sort_keys=True) == before


# --- lost, vanished -------------------------------------------------------------------------


def test_lost_with_a_reason() -> None:
    reason = "the job's watchdog process 7432 is gone"
    job = _event(_corpus("win219_running.job"), Status.LOST, reason=reason)["async_job"]
    assert job["status"] == "lost"
    assert job["finished"] is False
    assert job["failed"] is True
    assert job["msg"] == reason
    assert job["result"]["ansible_async_watchdog_pid"] == 7432


def test_lost_without_record_or_reason() -> None:
    job = _event(None, Status.LOST)["async_job"]
    assert job["msg"] == "the job can no longer finish"
    assert job["result"] == {}
    assert (job["rc"], job["changed"], job["stdout"], job["truncated"]) == (None, None, "", False)


def test_vanished_outcome_is_unknown() -> None:
    job = _event(_corpus("posix_running.job"), Status.VANISHED)["async_job"]
    assert job["finished"] is False
    assert job["failed"] is None
    assert job["msg"] == "the job file was removed before the job finished"


def test_reason_does_not_replace_the_records_msg() -> None:
    job = _event(_corpus("win218_failed_rc.job"), reason="ignored")["async_job"]
    assert job["msg"] == "non-zero return code"


# --- bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", range(0, 40))
def test_cut_at_character_boundaries(limit: int) -> None:
    text = "aé日🚀" * 5  # 1, 2, 3 and 4 bytes
    cut, was_cut = cut_utf8(text, limit)
    assert text.startswith(cut)
    assert len(cut.encode()) <= limit
    assert len(cut.encode()) > limit - 4 or not was_cut  # nothing more than one character lost
    assert was_cut is (cut != text)


def test_stdout_and_stderr_are_cut_to_bytes() -> None:
    stdout = "日本語のテキスト" * 1000
    job = _event(_record({"stdout": stdout, "stderr": "é" * 1001}), max_output_bytes=1000)
    out = job["async_job"]
    assert len(out["stdout"].encode()) <= 1000
    assert len(out["stdout"].encode()) > 997
    assert stdout.startswith(out["stdout"])
    assert out["stderr"] == "é" * 500
    assert out["truncated"] is True
    assert _size(out["result"]) <= 1000


def test_short_output_is_not_truncated() -> None:
    assert (
        _event(_corpus("win218_finished.job"), max_output_bytes=4096)["async_job"]["truncated"]
        is False
    )


def test_5mb_stdout_gives_a_bounded_event() -> None:
    lines = [f"line {i}: Grüße 日本 🚀" for i in range(160_000)]
    stdout = "\r\n".join(lines)
    assert len(stdout.encode()) > 5_000_000
    data = {
        "started": True,
        "finished": True,
        "changed": True,
        "rc": 0,
        "stdout": stdout,
        "stdout_lines": lines,
        "stderr": "",
        "stderr_lines": [],
        "invocation": {"module_args": {"_raw_params": "x" * 100_000}},
    }
    raw = b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=False).encode() + b"\r\n"
    record = parse_job_file(raw)
    assert record is not None
    limit = 64 * 1024
    event = _event(record, max_output_bytes=limit)
    job = event["async_job"]
    assert job["truncated"] is True
    assert len(job["stdout"].encode()) <= limit
    assert stdout.startswith(job["stdout"])
    assert _size(job["result"]) <= limit
    assert job["result"]["rc"] == 0  # small keys kept, the big ones cut
    assert job["result"]["stdout_lines"][0] == lines[0]
    assert stdout.startswith(job["result"]["stdout"])
    assert _size(event) <= 3 * limit + 4096
    json.dumps(event, allow_nan=False)


def test_result_with_many_keys_becomes_a_marker() -> None:
    record = _record({f"key{i}": i for i in range(100_000)})
    job = _event(record, max_output_bytes=4096)["async_job"]
    assert job["truncated"] is True
    assert job["result"]["_truncated"] is True
    assert job["result"]["_bytes_at_least"] > 4096


def test_deeply_nested_result_never_raises() -> None:
    deep: Any = "bottom"
    for _ in range(5000):
        deep = {"d": [deep]}
    job = _event(_record({"data": deep, "msg": deep}), max_output_bytes=4096)["async_job"]
    assert job["truncated"] is True
    assert job["result"]["_truncated"] is True
    json.dumps(job)


def test_nested_containers_are_cut() -> None:
    result = {
        "rc": 0,
        "facts": {f"k{i}": "v" * 50 for i in range(1000)},
        "items": list(range(10**4)),
    }
    bounded, cut = bound_result(result, 2048)
    assert cut is True
    assert _size(bounded) <= 2048
    assert bounded["rc"] == 0
    assert bounded["items"] == list(range(len(bounded["items"])))


def test_tiny_and_zero_limits_never_raise() -> None:
    for limit in (0, 1, 10, 31):
        job = _event(_corpus("win219_finished_bom.job"), max_output_bytes=limit)["async_job"]
        assert job["stdout"] == "" or len(job["stdout"].encode()) <= limit
        assert job["truncated"] is True
        json.dumps(job)


def test_summary_record_is_marked_truncated_and_too_large() -> None:
    record = parse_summary(
        {
            "started": True,
            "finished": True,
            "failed": True,
            "rc": 2,
            "msg": None,
            "changed": True,
            "ansible_async_watchdog_pid": 1,
        }
    )
    job = _event(record)["async_job"]
    assert job["truncated"] is True
    assert job["output_too_large"] is True
    assert job["status"] == "failed" and job["rc"] == 2
    assert job["stdout"] == ""
    assert job["msg"] is None
    assert _event(_corpus("win219_failed_rc.job"))["async_job"]["output_too_large"] is False


# --- JSON safety ----------------------------------------------------------------------------


def test_lone_surrogates_and_odd_values_are_json_safe() -> None:
    record = _corpus("posix_escaped_non_ascii.job")
    assert "\udcff" in record.result["stdout"]
    job = _event(record)["async_job"]
    assert job["stdout"] == "café \ufffd"
    json.dumps(job, ensure_ascii=False).encode("utf-8")
    odd = _record({1: {2: ("a", float("nan"))}, "inf": float("inf"), "o": object()})  # type: ignore[dict-item]
    result = _event(odd)["async_job"]["result"]
    assert result["1"] == {"2": ["a", "nan"]}
    assert result["inf"] == "inf"
    assert result["o"].startswith("<object")
    json.dumps(result, allow_nan=False)


def test_summary_with_non_str_keys_gives_str_keys_only() -> None:
    record = parse_summary({"started": 1, "finished": 1, 5: {6: [7]}})  # type: ignore[dict-item]
    event = _event(record)
    assert _keys_are_str(event)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.job")))
def test_every_corpus_record_gives_a_json_event(name: str) -> None:
    record = parse_job_file((CORPUS / name).read_bytes())
    if record is None:
        return
    for limit in (64, 65536):
        event = _event(record, max_output_bytes=limit)
        text = json.dumps(event, allow_nan=False, ensure_ascii=False)
        assert json.loads(text) == event
        assert _keys_are_str(event)


# --- uuids ----------------------------------------------------------------------------------


def test_uuid_is_stable_across_releases() -> None:
    # A literal: a change here would make every restarted source re-emit under new uuids.
    assert event_uuid("win01", "j687253281342.17218", Status.FAILED) == (
        "700deb6b-59ea-5e79-a6fd-61245a9d13e4"
    )
    assert uuid.UUID(event_uuid("h", "j1.2", Status.LOST)).version == 5


def test_uuid_is_the_same_in_another_process() -> None:
    code = (
        "from winasync_eda.events import event_uuid\n"
        "from winasync_eda.model import Status\n"
        "print(event_uuid('win02', 'j1.2', Status.TIMED_OUT))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PACKAGE_PARENT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.stdout.strip() == event_uuid("win02", "j1.2", Status.TIMED_OUT)


def test_uuid_differs_per_host_jid_and_status() -> None:
    ids = {
        event_uuid(host, jid, status)
        for host in ("a", "b")
        for jid in ("j1.2", "j1.3")
        for status in Status
    }
    assert len(ids) == 2 * 2 * len(Status)
    assert event_uuid("a", "j1.2", Status.FAILED) == event_uuid("a", "j1.2", "failed")  # type: ignore[arg-type]


def test_event_uuid_ignores_content_and_times() -> None:
    one = _event(_corpus("win218_failed_rc.job"))
    two = _event(_corpus("win219_failed_rc.job"), modified_at_ms=None, max_output_bytes=10)
    assert one["meta"]["uuid"] == two["meta"]["uuid"]


# --- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms", "expect"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (MODIFIED, "2026-11-28T17:01:37Z"),
        (DETECTED, "2026-11-28T17:01:41Z"),
        (-1, "1969-12-31T23:59:59Z"),
        (None, None),
        (10**20, None),
        (True, None),
    ],
)
def test_format_utc(ms: int | None, expect: str | None) -> None:
    assert format_utc(ms) == expect


# --- host events ----------------------------------------------------------------------------


def test_host_event() -> None:
    event = build_host_event(
        host="win01", status="unreachable", error="connection refused", detected_at_ms=DETECTED
    )
    assert event == {
        "async_host": {
            "host": "win01",
            "status": "unreachable",
            "error": "connection refused",
            "detected_at": "2026-11-28T17:01:41Z",
        },
        "meta": {"hosts": "win01", "uuid": event["meta"]["uuid"]},
    }
    same = build_host_event(
        host="win01", status="unreachable", error="other", detected_at_ms=DETECTED
    )
    assert same["meta"]["uuid"] == event["meta"]["uuid"]
    later = build_host_event(
        host="win01", status="unreachable", error=None, detected_at_ms=DETECTED + 1
    )
    assert later["meta"]["uuid"] != event["meta"]["uuid"]
    assert later["async_host"]["error"] is None
    back = build_host_event(host="win01", status="recovered", error=None, detected_at_ms=DETECTED)
    assert back["meta"]["uuid"] != event["meta"]["uuid"]
    json.dumps(back)


def test_host_event_rejects_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="unreachable"):
        build_host_event(host="h", status="down", error=None, detected_at_ms=0)
