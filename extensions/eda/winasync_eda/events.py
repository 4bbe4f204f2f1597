"""The events the source puts on the queue, in the contract's shape (``docs/contract.md``) and
within a size bound.

A job file can hold megabytes of output and anything a module chose to return; an event must
stay small, JSON-serialisable and free of non-str keys, whatever the file held. Nothing here
raises on odd content: the worst case is a result replaced by a small marker.

Choices the contract leaves open:

* ``stdout``/``stderr`` are ``""`` when the result has none (rulebook tests on them never meet
  null); ``result`` still shows whether the key was there. ``msg`` is bounded like them.
* Cuts keep the head of a text, at a UTF-8 character boundary, and the first items of a list.
* ``failed`` follows the status: true for failed, timed_out and lost (a lost job did not
  succeed), false for finished and running, null for vanished (removed before it finished:
  perhaps by the cleanup after a success, so its outcome is unknown).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .classify import JobRecord
from .model import Status

LOGGER = logging.getLogger(__name__)

# Fixed forever: changing it changes every event's uuid, and with it the engine's de-duplication.
UUID_NAMESPACE = uuid.UUID("6b1f3c1e-0a6e-5d3c-9a57-7d2f1a8b4c10")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SURROGATES = re.compile("[\ud800-\udfff]")
_FINAL = frozenset({Status.FINISHED, Status.FAILED, Status.TIMED_OUT})
_DEFAULT_REASON = {
    Status.LOST: "the job can no longer finish",
    Status.VANISHED: "the job file was removed before the job finished",
}
# Below this, halving the per-value budget again cannot save a result: use the marker.
_MIN_BUDGET = 16
HOST_STATUSES = frozenset({"unreachable", "recovered"})


def event_uuid(host: str, jid: str, status: Status) -> str:
    """The same for the same job outcome in any process, so the engine can drop a repeat."""
    return str(uuid.uuid5(UUID_NAMESPACE, f"job\x1f{host}\x1f{jid}\x1f{status}"))


def format_utc(ms: int | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` for ms since the epoch; None when unknown or out of range."""
    if ms is None or isinstance(ms, bool):
        return None
    try:
        t = _EPOCH + timedelta(milliseconds=ms)
    except (OverflowError, TypeError, ValueError):
        return None
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def build_job_event(
    *,
    host: str,
    jid: str,
    status: Status,
    record: JobRecord | None,
    results_file: str,
    async_dir: str,
    modified_at_ms: int | None,
    detected_at_ms: int,
    max_output_bytes: int,
    reason: str | None = None,
) -> dict[str, Any]:
    """One ``async_job`` event; ``reason`` fills ``msg`` when the record has none (lost...)."""
    status = Status(status)
    limit = max(0, int(max_output_bytes))
    source: Mapping[Any, Any] = record.result if record is not None else {}
    truncated = record is not None and record.partial

    stdout, cut = cut_utf8(_as_text(source.get("stdout")), limit)
    truncated |= cut
    stderr, cut = cut_utf8(_as_text(source.get("stderr")), limit)
    truncated |= cut

    raw_msg = source.get("msg")
    msg: str | None
    if raw_msg is None:
        raw_msg = reason if reason is not None else _DEFAULT_REASON.get(status)
    if raw_msg is None:
        msg = None
    else:
        msg, cut = cut_utf8(_as_text(raw_msg), limit)
        truncated |= cut

    result, cut = bound_result(source, limit)
    truncated |= cut

    return {
        "async_job": {
            "host": host,
            "jid": jid,
            "status": str(status),
            "finished": status in _FINAL,
            "failed": _failed_of(status),
            "rc": _as_int(source.get("rc")),
            "msg": msg,
            "changed": _as_bool(source.get("changed")),
            "stdout": stdout,
            "stderr": stderr,
            "truncated": truncated,
            "result": result,
            "results_file": results_file,
            "async_dir": async_dir,
            "modified_at": format_utc(modified_at_ms),
            "detected_at": format_utc(detected_at_ms),
        },
        "meta": {"hosts": host, "uuid": event_uuid(host, jid, status)},
    }


def build_host_event(
    *, host: str, status: str, error: str | None, detected_at_ms: int
) -> dict[str, Any]:
    """One ``async_host`` event (``unreachable`` or ``recovered``)."""
    if status not in HOST_STATUSES:
        raise ValueError(f"host event status must be one of {sorted(HOST_STATUSES)}: {status!r}")
    key = f"host\x1f{host}\x1f{status}\x1f{detected_at_ms}"
    return {
        "async_host": {
            "host": host,
            "status": status,
            "error": _clean_str(error) if error is not None else None,
            "detected_at": format_utc(detected_at_ms),
        },
        "meta": {"hosts": host, "uuid": str(uuid.uuid5(UUID_NAMESPACE, key))},
    }


def cut_utf8(text: str, limit: int) -> tuple[str, bool]:
    """The head of ``text`` within ``limit`` UTF-8 bytes, never half a character; and if cut."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return _clean_str(text), False
    head = _clean_str(text[: max(0, limit)])  # every character takes at least 1 byte
    data = head.encode("utf-8")
    if len(data) <= limit:
        return head, len(head) < len(text)
    # decode drops only the incomplete character at the end of the cut
    return data[:limit].decode("utf-8", errors="ignore"), True


def bound_result(result: Mapping[Any, Any], limit: int) -> tuple[dict[str, Any], bool]:
    """A JSON-safe copy of a module result without ``invocation``, about ``limit`` bytes at most.

    Long texts and lists are cut with a per-value budget that halves until the whole fits; a
    result that still does not fit (thousands of keys, say) becomes a small marker. The work is
    about the size of what is kept, not of what the file held.
    """
    try:
        items = [(k, v) for k, v in result.items() if k != "invocation"]
        if _at_least(items, limit) <= limit:
            clean, cut = _fit_top(items, None)
            if _json_size(clean) <= limit:
                return clean, cut
        # keys and the smallest values alone overflow: cutting values cannot save it
        if 1 + sum(len(_key(k)) + 5 for k, _ in items) <= limit:
            budget = limit // 2
            while budget >= _MIN_BUDGET:
                shrunk, cut = _fit_top(items, budget)
                if _json_size(shrunk) <= limit:
                    return shrunk, cut
                budget //= 2
    except (RecursionError, ValueError, TypeError) as exc:
        LOGGER.debug("result not bounded (%s): replaced by a marker", type(exc).__name__)
    return _marker(result), True


def _marker(result: Mapping[Any, Any]) -> dict[str, Any]:
    size: int | None
    try:
        size = _at_least([(k, v) for k, v in result.items() if k != "invocation"], sys.maxsize)
    except (RecursionError, ValueError, TypeError):
        size = None
    return {"_truncated": True, "_bytes_at_least": size}


def _at_least(items: list[tuple[Any, Any]], cap: int) -> int:
    """A lower bound of the JSON size of these top-level items, counted no further than cap."""
    total = 2
    stack: list[Iterator[Any]] = [iter(v for kv in items for v in kv)]
    while stack:
        try:
            value = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(value, str):
            total += len(value) + 2  # each character takes at least a byte
        elif isinstance(value, Mapping):
            total += 2
            stack.append(iter(v for kv in value.items() for v in kv))
        elif isinstance(value, list | tuple):
            total += 2
            stack.append(iter(value))
        else:
            total += 1
        if total > cap:
            break
    return total


def _fit_top(items: list[tuple[Any, Any]], budget: int | None) -> tuple[dict[str, Any], bool]:
    out: dict[str, Any] = {}
    cut = False
    for key, value in items:
        out[_key(key)], c = _fit(value, budget)
        cut |= c
    return out, cut


def _fit(value: Any, budget: int | None) -> tuple[Any, bool]:
    """A JSON-safe copy; with a budget, texts and nested containers are cut to it."""
    if value is None or isinstance(value, bool | int):
        return value, False
    if isinstance(value, float):
        return (value if math.isfinite(value) else str(value)), False
    if isinstance(value, str):
        return (_clean_str(value), False) if budget is None else cut_utf8(value, budget)
    if isinstance(value, Mapping):
        return _fit_items(((_key(k), v) for k, v in value.items()), budget, as_dict=True)
    if isinstance(value, list | tuple):
        return _fit_items(((None, v) for v in value), budget, as_dict=False)
    return _fit(str(value), budget)


def _fit_items(items: Any, budget: int | None, *, as_dict: bool) -> tuple[Any, bool]:
    pairs: list[tuple[str | None, Any]] = []
    cut = False
    used = 2  # the brackets
    for key, item in items:
        fitted, c = _fit(item, budget)
        cut |= c
        if budget is not None:
            used += _json_size(fitted) + 1 + (_json_size(key) + 1 if key is not None else 0)
            if used > budget and pairs:
                cut = True
                break
        pairs.append((key, fitted))
    if as_dict:
        return {str(k): v for k, v in pairs}, cut
    return [v for _, v in pairs], cut


def _key(key: Any) -> str:
    return _clean_str(key if isinstance(key, str) else str(key))


def _clean_str(text: str) -> str:
    """Lone surrogates (POSIX surrogateescape output) cannot be encoded: make them U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)
    return text


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        fitted, _ = _fit(value, None)
        return json.dumps(fitted, ensure_ascii=False)
    except (RecursionError, ValueError, TypeError):
        return f"<{type(value).__name__}>"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return None


def _failed_of(status: Status) -> bool | None:
    if status is Status.VANISHED:
        return None
    return status in (Status.FAILED, Status.TIMED_OUT, Status.LOST)
