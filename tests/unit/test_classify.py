"""Job files as ansible's writers leave them, byte for byte, and what each one classifies to."""

from __future__ import annotations

import codecs
import json
import random
from pathlib import Path
from typing import Any

import pytest
from winasync_eda.classify import (
    JobRecord,
    decode_job_text,
    parse_job_file,
    parse_summary,
)
from winasync_eda.model import Status

CORPUS = Path(__file__).resolve().parents[1] / "data" / "jobfiles"
MANIFEST: dict[str, dict[str, Any]] = json.loads(
    (CORPUS / "manifest.json").read_text(encoding="utf-8")
)["files"]
BOM = codecs.BOM_UTF8

WIN_NEW_TIMEOUT = "failure during async watchdog: timed out waiting for module completion"
WIN_OLD_TIMEOUT = "timed out waiting for module completion"


def _win_initial(new: bool) -> dict[str, Any]:
    return {
        "started": True if new else 1,
        "finished": False if new else 0,
        "results_file": "C:\\Users\\ansible\\.ansible_async\\j1.2",
        "ansible_job_id": "j1.2",
        "_ansible_suppress_tmpdir_delete": True,
        "ansible_async_watchdog_pid": 4242,
    }


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- the corpus -----------------------------------------------------------------------------


def test_manifest_lists_exactly_the_corpus() -> None:
    on_disk = {p.name for p in CORPUS.glob("*.job")}
    assert on_disk == set(MANIFEST)
    assert len(on_disk) > 40


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_bytes_are_as_described(name: str) -> None:
    """A checkout that rewrote line ends or encodings would make the corpus prove nothing."""
    raw = (CORPUS / name).read_bytes()
    body = raw[len(BOM) :] if raw.startswith(BOM) else raw
    checks = {
        "bom": raw.startswith(BOM),
        "no_bom": not raw.startswith(BOM),
        "crlf": raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b""),
        "no_newline": not raw.endswith((b"\n", b"\r")),
        "ascii": body.isascii(),
        "cp1252": not _is_utf8(body),
        "utf8": _is_utf8(body) and not body.isascii(),
    }
    for feature in MANIFEST[name].get("bytes", []):
        assert checks[feature], f"{name}: expected {feature}"


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_classifies_as_the_manifest_says(name: str) -> None:
    entry = MANIFEST[name]
    record = parse_job_file((CORPUS / name).read_bytes())
    if entry["expect"] is None:
        assert record is None
        return
    assert record is not None
    assert record.status == Status(entry["expect"])
    assert record.finished is (record.status is not Status.RUNNING)
    assert record.watchdog_pid == entry.get("watchdog_pid")
    assert not record.partial
    for key, value in entry.get("fields", {}).items():
        assert record.result[key] == value, key


def test_corpus_covers_every_status_and_both_generations() -> None:
    expects = {e["expect"] for e in MANIFEST.values()}
    assert expects == {None, "running", "finished", "failed", "timed_out"}
    for prefix in ("win218_", "win219_", "posix"):
        seen = {e["expect"] for n, e in MANIFEST.items() if n.startswith(prefix)}
        assert {"running", "finished", "failed", "timed_out"} <= seen, prefix


# --- decoding -------------------------------------------------------------------------------


def test_decode_strips_bom_and_crlf() -> None:
    assert decode_job_text(BOM + b'{"a":"\xc3\xa9"}\r\n') == '{"a":"é"}'


def test_decode_falls_back_to_the_ansi_code_page() -> None:
    assert decode_job_text(b'{"a":"caf\xe9 \x80"}\r\n') == '{"a":"café €"}'


def test_decode_with_another_ansi_code_page() -> None:
    raw = '{"a":"Привет"}\r\n'.encode("cp1251")
    assert decode_job_text(raw, ansi_encoding="cp1251") == '{"a":"Привет"}'
    record = parse_job_file(raw, ansi_encoding="cp1251")
    assert record is not None
    assert record.result["a"] == "Привет"


def test_decode_prefers_utf8_when_the_bytes_are_valid_utf8() -> None:
    assert decode_job_text("é".encode()) == "é"


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert decode_job_text(bytearray(b" {} ")) == "{}"  # type: ignore[arg-type]
    assert decode_job_text(memoryview(b"{}\r\n")) == "{}"  # type: ignore[arg-type]


# --- big files ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp1252"])
def test_huge_file(encoding: str) -> None:
    stdout = "Zeile mit Umlaut ä und Euro €\r\n" * 180_000  # about 5.6 MB
    data = dict(_win_initial(new=encoding != "cp1252"), finished=1, changed=True, rc=0)
    data["stdout"] = stdout
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(encoding) + b"\r\n"
    assert len(raw) > 5_000_000
    record = parse_job_file(raw)
    assert record is not None
    assert record.status is Status.FINISHED
    assert record.result["stdout"] == stdout
    # and half of it is only "not yet"
    assert parse_job_file(raw[: len(raw) // 2]) is None


# --- the rules one by one -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("started", "finished", "expect"),
    [
        (1, 0, Status.RUNNING),
        (1, 1, Status.FINISHED),
        (True, False, Status.RUNNING),
        (True, True, Status.FINISHED),
    ],
)
def test_ints_and_bools(started: Any, finished: Any, expect: Status) -> None:
    raw = json.dumps({"started": started, "finished": finished, "ansible_job_id": "j1.2"})
    record = parse_job_file(raw.encode())
    assert record is not None
    assert record.status is expect


@pytest.mark.parametrize("finished", ["1", "true", None, 1.5, [1], {"x": 1}])
def test_finished_values_ansible_never_writes_are_no_record(finished: Any) -> None:
    raw = json.dumps({"started": 1, "finished": finished}).encode()
    assert parse_job_file(raw) is None


def test_posix_result_without_started_is_finished() -> None:
    record = parse_job_file(b'{"changed": false, "rc": 0, "stdout": "x"}')
    assert record is not None
    assert record.status is Status.FINISHED
    assert record.watchdog_pid is None


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ({"failed": True}, Status.FAILED),
        ({"failed": 1}, Status.FAILED),
        ({"failed": "yes"}, Status.FAILED),
        ({"failed": False, "rc": 3}, Status.FINISHED),
        ({"failed": None, "rc": 3}, Status.FAILED),
        ({"rc": 3}, Status.FAILED),
        ({"rc": "0"}, Status.FINISHED),
        ({"rc": 0}, Status.FINISHED),
        ({"rc": None}, Status.FINISHED),
        ({"failed": "false"}, Status.FINISHED),
    ],
)
def test_failed_follows_ansible(extra: dict[str, Any], expect: Status) -> None:
    data = dict(_win_initial(new=True), finished=True, changed=True, **extra)
    record = parse_job_file(json.dumps(data).encode())
    assert record is not None
    assert record.status is expect


def _timeout_new() -> dict[str, Any]:
    return dict(
        _win_initial(new=True),
        finished=True,
        failed=True,
        msg=WIN_NEW_TIMEOUT,
        exception="timed out waiting for module completion\r\nAt line:93 char:9",
        stdout=None,
        stderr="",
    )


def _timeout_old() -> dict[str, Any]:
    return dict(_win_initial(new=False), finished=1, failed=True, msg=WIN_OLD_TIMEOUT)


POSIX_TIMEOUT = {"msg": "Timeout exceeded", "failed": True, "child_pid": 17219}


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (_timeout_new(), Status.TIMED_OUT),
        (_timeout_old(), Status.TIMED_OUT),
        (dict(POSIX_TIMEOUT), Status.TIMED_OUT),
        # a module result merged in: the module completed, the failure is its own
        (dict(_timeout_new(), changed=False), Status.FAILED),
        (dict(_timeout_old(), invocation={"module_args": {}}), Status.FAILED),
        (dict(_timeout_old(), rc=1), Status.FAILED),
        # 2.15-2.18's timeout never carries the 2.19 catch's keys
        (dict(_timeout_old(), stdout="x"), Status.FAILED),
        # the message must match in full, not in part
        (dict(_timeout_new(), msg=WIN_NEW_TIMEOUT + "."), Status.FAILED),
        (dict(_timeout_old(), msg="Timed out waiting for module completion"), Status.FAILED),
        (dict(_timeout_new(), msg="the service timed out waiting for a response"), Status.FAILED),
        # the 2.19 message in a 2.15-2.18 shape is still the watchdog's (keys are a subset)
        (dict(_timeout_old(), msg=WIN_NEW_TIMEOUT), Status.TIMED_OUT),
        # a Windows timeout message without the wrapper's keys: not the watchdog's file
        ({"failed": True, "msg": WIN_OLD_TIMEOUT}, Status.FAILED),
        # POSIX: exactly the supervisor's three keys
        ({"msg": "Timeout exceeded", "failed": True}, Status.FAILED),
        (dict(POSIX_TIMEOUT, changed=False), Status.FAILED),
        (dict(POSIX_TIMEOUT, started=1, finished=1), Status.FAILED),
        # not failed: never timed out
        (dict(_timeout_new(), failed=False), Status.FINISHED),
    ],
)
def test_timeout_is_told_by_the_writers_shape(data: dict[str, Any], expect: Status) -> None:
    record = parse_job_file(json.dumps(data).encode())
    assert record is not None
    assert record.status is expect
    assert record.failed is (expect is not Status.FINISHED)


def test_watchdog_failure_before_finished_is_final() -> None:
    data = dict(_win_initial(new=True), failed=True, msg="failure during async watchdog: boom")
    record = parse_job_file(json.dumps(data).encode())
    assert record is not None
    assert record.finished is True
    assert record.status is Status.FAILED
    assert record.result["finished"] is False  # the file itself is left as it is


@pytest.mark.parametrize(("pid", "expect"), [(4242, 4242), (0, None), (-1, None), (True, None)])
def test_watchdog_pid(pid: Any, expect: int | None) -> None:
    data = dict(_win_initial(new=True), ansible_async_watchdog_pid=pid)
    record = parse_job_file(json.dumps(data).encode())
    assert record is not None
    assert record.watchdog_pid == expect


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 200_000,
        b'{"a":' * 200_000,
        b'{"rc": ' + b"9" * 10_000 + b"}",
        b"\xff\xfe{\x00}\x00",
        BOM + BOM,
        b"{" + b"\x00" * 10,
    ],
)
def test_hostile_bytes_are_no_record_and_never_raise(raw: bytes) -> None:
    assert parse_job_file(raw) is None


def test_random_bytes_and_cuts_never_raise() -> None:
    rng = random.Random(1234)
    good = (CORPUS / "win219_finished_bom.job").read_bytes().rstrip()  # up to the last brace
    for _ in range(500):
        cut = good[: rng.randrange(len(good))]
        assert parse_job_file(cut) is None  # any strict prefix of an object is incomplete
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        result = parse_job_file(noise)
        assert result is None or isinstance(result, JobRecord)


def test_nan_and_infinity_become_strings() -> None:
    record = parse_job_file(b'{"changed": true, "elapsed": NaN, "x": -Infinity}')
    assert record is not None
    assert record.result["elapsed"] == "NaN"
    assert record.result["x"] == "-Infinity"


# --- the poll script's summary of a file too big to send --------------------------------------


def _summary(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "started": True,
        "finished": True,
        "failed": None,
        "rc": None,
        "msg": None,
        "changed": None,
        "ansible_async_watchdog_pid": 4242,
        "stdout": None,
        "stderr": None,
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("summary", "expect"),
    [
        (_summary(finished=False), Status.RUNNING),
        (_summary(finished=0, started=1), Status.RUNNING),
        (_summary(changed=True, rc=0, stdout="x" * 100), Status.FINISHED),
        (_summary(failed=True, rc=3, msg="non-zero return code"), Status.FAILED),
        (_summary(rc=2), Status.FAILED),
        (_summary(failed=True, msg=WIN_NEW_TIMEOUT, stderr=""), Status.TIMED_OUT),
        (_summary(failed=True, msg=WIN_OLD_TIMEOUT, finished=1, started=1), Status.TIMED_OUT),
        (_summary(failed=True, msg=WIN_NEW_TIMEOUT, rc=1), Status.FAILED),
        (_summary(failed=True, msg=WIN_NEW_TIMEOUT, changed=False), Status.FAILED),
        (_summary(failed=True, msg=WIN_OLD_TIMEOUT, stdout="out"), Status.FAILED),
        # no `started` in the file: a POSIX result, finished
        (_summary(started=None, finished=None, changed=True), Status.FINISHED),
    ],
)
def test_summary(summary: dict[str, Any], expect: Status) -> None:
    record = parse_summary(summary)
    assert record is not None
    assert record.status is expect
    assert record.partial is True
    assert record.watchdog_pid == 4242
    assert None not in record.result.values()


@pytest.mark.parametrize("summary", [_summary(finished="yes"), [1, 2], "x", None])
def test_summary_that_is_no_record(summary: Any) -> None:
    assert parse_summary(summary) is None


def test_summary_keys_become_strings() -> None:
    record = parse_summary({"started": 1, "finished": 1, 7: "x"})  # type: ignore[dict-item]
    assert record is not None
    assert record.result["7"] == "x"


def test_record_is_frozen() -> None:
    record = parse_job_file(b"{}")
    assert record is not None
    with pytest.raises(AttributeError):
        record.failed = True  # type: ignore[misc]
