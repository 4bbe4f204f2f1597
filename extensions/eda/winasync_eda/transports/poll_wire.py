"""The poll protocol's wire format (docs/poll-protocol.md): what goes in, what comes back.

``poll.ps1`` is the script; ``winsim/scripts/poll.py`` is its Python twin on the simulated host.
The names the two sides must agree on (markers, function, parameters, read sizes) are declared
here once for the client; ``tests/unit/test_poll_twins.py`` fails when the twin or the script
differs. Nothing here does I/O or knows about pypsrp.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from ..model import is_job_name
from .base import FileEntry, PollRequest, Snapshot

SCRIPT_PATH: Final = Path(__file__).with_name("poll.ps1")
POLL_SCRIPT: Final = SCRIPT_PATH.read_text(encoding="utf-8")
MARKER: Final = "# winasync-eda-poll v1"
DEFINE_MARKER: Final = "# winasync-eda-poll-define v1"
FUNCTION: Final = "Invoke-WinasyncPoll"
# run once per pool: the poll script, unchanged, as the body of a function in the global scope
DEFINE_SCRIPT: Final = f"{DEFINE_MARKER}\nfunction global:{FUNCTION} {{\n{POLL_SCRIPT}\n}}\n"
# what the script throws, first thing, in a session whose language mode is not FullLanguage
UNSUPPORTED_PREFIX: Final = "winasync-eda-poll: unsupported: "
PARAMETER_NAMES: Final = (
    "AsyncDir",
    "Known",
    "Pids",
    "Only",
    "MaxBytes",
    "MaxAnswer",
    "Wait",
    "Seen",
)
ANSWER_VERSION: Final = 1

_T = TypeVar("_T")


class BadAnswerError(Exception):
    """The host answered something that is not the poll protocol's JSON."""


def unsupported_reason(error_text: str) -> str | None:
    """The reason a host gave for not running the poll (its language mode), or None."""
    start = error_text.find(UNSUPPORTED_PREFIX)
    return None if start < 0 else error_text[start + len(UNSUPPORTED_PREFIX) :].strip()


def build_parameters(request: PollRequest) -> dict[str, str]:
    """The poll script's parameters, every one a string (never pasted into the script).

    ``Wait`` and ``Seen`` go only with a waiting poll: a plain poll stays what it was, and a
    deployed copy of an older script (``poll_script``) keeps working in poll mode."""
    known = {name: key.encode() for name, key in request.known.items()}
    parameters = {
        "AsyncDir": request.async_dir,
        "Known": json.dumps(known, separators=(",", ":")),
        "Pids": json.dumps([int(pid) for pid in request.pids], separators=(",", ":")),
        "Only": json.dumps([str(name) for name in request.only], separators=(",", ":")),
        "MaxBytes": str(int(request.max_bytes)),
        "MaxAnswer": str(int(request.max_answer_bytes)),
    }
    wait_ms = round(request.wait_s * 1000)
    if wait_ms > 0:
        # a decimal number of seconds, whole milliseconds, never an exponent
        parameters["Wait"] = f"{wait_ms // 1000}.{wait_ms % 1000:03d}"
        parameters["Seen"] = json.dumps(
            {str(int(pid)): start for pid, start in request.seen_procs.items()},
            separators=(",", ":"),
        )
    return parameters


def parse_answer(output: Sequence[object]) -> Snapshot:
    """Turn the pipeline's single JSON string into a Snapshot (BadAnswerError on anything else)."""
    if len(output) != 1 or not isinstance(output[0], str):
        raise BadAnswerError(f"expected one JSON string, got {len(output)} output object(s)")
    try:
        data = json.loads(output[0])
    except ValueError:
        raise BadAnswerError("the output is not JSON") from None
    if not isinstance(data, dict) or data.get("v") != ANSWER_VERSION:
        raise BadAnswerError(f"the output is not a version {ANSWER_VERSION} poll answer")
    files = _get(data, "files", list)
    gone = _names(data, "gone")
    deferred = tuple(_names(data, "deferred")) if "deferred" in data else ()
    procs = _get(data, "procs", dict)
    return Snapshot(
        results_dir=_get(data, "dir", str),
        exists=_get(data, "exists", bool),
        now_ms=_get_int(data, "now_ms"),
        boot_ms=_get_optional_int(data, "boot_ms"),
        changed=[_parse_file(item) for item in files],
        gone=gone,
        procs={_parse_pid(key): _proc_value(value) for key, value in procs.items()},
        deferred=deferred,
        ansi_codepage=_get_optional_int(data, "ansi_cp"),
    )


def _names(data: Mapping[str, Any], key: str) -> list[str]:
    names = _get(data, key, list)
    if not all(isinstance(name, str) for name in names):
        raise BadAnswerError(f"{key!r} holds a non-string")
    return list(names)


def _get(data: Mapping[str, Any], key: str, kind: type[_T]) -> _T:
    value = data.get(key)
    if not isinstance(value, kind):
        raise BadAnswerError(f"{key!r} is not a {kind.__name__}")
    return value


def _get_int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadAnswerError(f"{key!r} is not an integer")
    return value


def _get_optional_int(data: Mapping[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _get_int(data, key)


def _parse_file(item: object) -> FileEntry:
    if not isinstance(item, dict):
        raise BadAnswerError("a 'files' item is not an object")
    name = _get(item, "name", str)
    if not is_job_name(name):
        raise BadAnswerError("a 'files' item has a name that is not a job file name")
    content = item.get("content")
    if content is not None:
        if not isinstance(content, str):
            raise BadAnswerError(f"{name}: 'content' is not a string")
        try:
            content = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise BadAnswerError(f"{name}: 'content' is not base64") from None
    summary = item.get("summary")
    if summary is not None and not isinstance(summary, dict):
        raise BadAnswerError(f"{name}: 'summary' is not an object")
    error = item.get("error")
    if error is not None and not isinstance(error, str):
        raise BadAnswerError(f"{name}: 'error' is not a string")
    return FileEntry(
        name=name,
        size=_get_int(item, "size"),
        mtime_ms=_get_int(item, "mtime_ms"),
        ctime_ms=_get_optional_int(item, "ctime_ms"),
        content=content,
        summary=summary,
        error=error,
    )


def _parse_pid(key: str) -> int:
    if not key.isascii() or not key.isdigit():
        raise BadAnswerError("a 'procs' key is not a pid")
    return int(key)


def _proc_value(value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise BadAnswerError("a 'procs' value is not an integer or null")
