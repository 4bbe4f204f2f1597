"""From the bytes of one job file to what ansible would say about the job.

The rules follow the writers (ansible-core 2.15-2.21), not their documentation:

* ``ansible/executor/powershell/async_wrapper.ps1`` and ``async_watchdog.ps1``: 2.15-2.18 write
  ``started``/``finished`` as ints with ``Set-Content`` (ANSI code page on Windows PowerShell 5.1,
  trailing CRLF); 2.19+ write bools, the first time with ``WriteAllText`` (UTF-8, no BOM, no
  newline), the last time with ``Set-Content -Encoding UTF8`` (a BOM on 5.1, CRLF).
* ``ansible/modules/async_wrapper.py`` (POSIX): a running job has ``started``; a finished one is
  the bare module result with no ``started`` key, as ``async_status`` reads it.

Windows writes are not atomic, so an empty, half-written or foreign file yields ``None``: the
caller looks again next time and never turns it into an event.

A job is TIMED_OUT only when the file has exactly the shape the timeout path writes, never
because some message mentions a timeout:

* the ``msg`` is, in full, one the watchdog writes on timeout (2.15-2.18
  ``timed out waiting for module completion``; 2.19+ the same after
  ``failure during async watchdog:``; POSIX ``Timeout exceeded``), and
* every key is one the timeout path itself writes: the wrapper's initial keys plus
  ``finished``/``failed``/``msg`` (2.19+ also ``exception``/``stdout``/``stderr``) on Windows,
  exactly ``msg``/``failed``/``child_pid`` on POSIX. A module result is only merged into the file
  when the module completed, so any other key (``changed``, ``invocation``, ``rc``...) means the
  module ran to its end and the failure is its own: FAILED.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .model import Status

LOGGER = logging.getLogger(__name__)

# Windows PowerShell 5.1 writes ANSI without -Encoding; cp1252 is the usual code page.
DEFAULT_ANSI_ENCODING = "cp1252"

WIN_OLD_TIMEOUT_MSG = "timed out waiting for module completion"
WIN_NEW_TIMEOUT_MSG = "failure during async watchdog: timed out waiting for module completion"
POSIX_TIMEOUT_MSG = "Timeout exceeded"

# The initial result of async_wrapper.ps1, identical in both generations.
_WIN_INITIAL_KEYS = frozenset(
    {
        "started",
        "finished",
        "results_file",
        "ansible_job_id",
        "_ansible_suppress_tmpdir_delete",
        "ansible_async_watchdog_pid",
    }
)
# What the timeout branch of async_watchdog.ps1 adds (2.15-2.18: else branch; 2.19+: catch).
_WIN_OLD_TIMEOUT_KEYS = _WIN_INITIAL_KEYS | {"failed", "msg"}
_WIN_NEW_TIMEOUT_KEYS = _WIN_OLD_TIMEOUT_KEYS | {"exception", "stdout", "stderr"}
_POSIX_TIMEOUT_KEYS = frozenset({"msg", "failed", "child_pid"})

# ansible's own reading of a string flag (module_utils.parsing.convert_bool)
_TRUE_STRINGS = frozenset({"y", "yes", "on", "1", "true", "t"})


@dataclass(frozen=True)
class JobRecord:
    """One parse of a job file.

    ``finished`` means "the job is over, this file will not change": it is also true for the
    2.19+ watchdog failure written before ``finished`` was set (``failed`` true, ``finished``
    false), because the watchdog exits right after that write. So ``status`` is RUNNING exactly
    when ``finished`` is false.
    """

    result: Mapping[str, Any]
    finished: bool
    failed: bool
    timed_out: bool
    watchdog_pid: int | None
    # True when ``result`` is the poll script's summary of a file too big to send, not the file.
    partial: bool = False

    @property
    def status(self) -> Status:
        if not self.finished:
            return Status.RUNNING
        if self.timed_out:
            return Status.TIMED_OUT
        if self.failed:
            return Status.FAILED
        return Status.FINISHED


def ansi_encoding(codepage: int | None) -> str:
    """The codec of a Windows ANSI code page the host reported; cp1252 when unknown, UTF-8
    (65001, pwsh 7's default), or a code page Python has no codec for."""
    if codepage is None or codepage == 65001:
        return DEFAULT_ANSI_ENCODING
    name = f"cp{codepage}"
    try:
        codecs.lookup(name)
    except LookupError:
        return DEFAULT_ANSI_ENCODING
    return name


def decode_job_text(raw: bytes, *, ansi_encoding: str = DEFAULT_ANSI_ENCODING) -> str:
    """The text of a job file, whichever writer and PowerShell wrote it."""
    data = bytes(raw)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Bytes the code page leaves undefined (cp1252: 0x81, 0x8D...) become U+FFFD.
        text = data.decode(ansi_encoding, errors="replace")
    return text.strip()


def parse_job_file(raw: bytes, *, ansi_encoding: str = DEFAULT_ANSI_ENCODING) -> JobRecord | None:
    """The job's record, or None when the file is empty, half-written or not a JSON object."""
    try:
        text = decode_job_text(raw, ansi_encoding=ansi_encoding)
        if not text.startswith("{"):
            return None
        data = json.loads(text, parse_constant=str)
    except (ValueError, RecursionError):  # JSONDecodeError, too many digits, too deep
        return None
    if not isinstance(data, dict):
        return None
    return _record(data, partial=False)


def parse_summary(summary: Mapping[str, Any]) -> JobRecord | None:
    """The record of a file too big to read whole, from the poll script's summary of its ends.

    The summary has fixed keys (no stdout or stderr) and null for a key not found, so null
    counts as absent (a missing `started` then reads as a POSIX result: finished). The timeout
    rule applies to the keys it carries; a POSIX timeout (a few bytes) is never summarised.
    """
    if not isinstance(summary, Mapping):
        return None
    data = {str(k): v for k, v in summary.items() if v is not None and k != "invocation"}
    return _record(data, partial=True)


def _record(data: dict[str, Any], *, partial: bool) -> JobRecord | None:
    if "started" in data:
        # The wrappers always write `finished` next to `started`; ansible's async_status reads
        # a missing one as "not finished", and so do we.
        finished = _flag(data.get("finished", False))
        if finished is None:
            LOGGER.debug("a `finished` that ansible never writes: %r", data.get("finished"))
            return None
    else:
        finished = True  # POSIX: the bare module result, as async_status reads it
    failed = _failed(data)
    # 2.19+: a watchdog error before `finished` is set is written, then the watchdog exits.
    over = finished or failed
    timed_out = over and failed and _is_timeout(data)
    return JobRecord(
        result=data,
        finished=over,
        failed=failed,
        timed_out=timed_out,
        watchdog_pid=_pid(data.get("ansible_async_watchdog_pid")),
        partial=partial,
    )


def _flag(value: Any) -> bool | None:
    """`started`/`finished` as the wrappers write them (ints or bools); None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    return None


def _failed(data: Mapping[str, Any]) -> bool:
    """ansible's rule: the `failed` key when present, else a non-zero `rc`."""
    if "failed" in data and data["failed"] is not None:
        value = data["failed"]
        if isinstance(value, str):
            return value.strip().lower() in _TRUE_STRINGS
        return bool(value)
    rc = data.get("rc")
    return rc is not None and rc not in (0, "0")


def _is_timeout(data: Mapping[str, Any]) -> bool:
    keys = data.keys()
    msg = data.get("msg")
    if msg == WIN_OLD_TIMEOUT_MSG:
        return "started" in keys and keys <= _WIN_OLD_TIMEOUT_KEYS
    if msg == WIN_NEW_TIMEOUT_MSG:
        return "started" in keys and keys <= _WIN_NEW_TIMEOUT_KEYS
    if msg == POSIX_TIMEOUT_MSG:
        return keys == _POSIX_TIMEOUT_KEYS
    return False


# Process.GetProcessById takes an Int32: a larger "pid" cannot be checked on the host
_MAX_PID = 2**31 - 1


def _pid(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_PID:
        return value
    return None
