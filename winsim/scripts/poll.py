# The PowerShell twin of this file is
# extensions/eda/winasync_eda/transports/poll.ps1, and the spec both follow is
# docs/poll-protocol.md: a change to one is a change to both, and to that page.
"""The meaning of the project's poll script (``# winasync-eda-poll v1``) on a simulated host.

The client defines the script once per runspace pool as the function ``Invoke-WinasyncPoll``
(``# winasync-eda-poll-define v1``) and then calls it by name; the whole script, sent as a
script, is recognised too. Fidelity: the simulator does not track what each runspace defined, so
a call of the function succeeds even on a pool that never ran the define script.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from winsim.api import Command, PipelineResult
from winsim.jobfiles import ANSI_CODEPAGE, UTF8_BOM, convert_to_json

if TYPE_CHECKING:
    from winsim.host import SimHost

log = logging.getLogger(__name__)

MARKER = "# winasync-eda-poll v1"
DEFINE_MARKER = "# winasync-eda-poll-define v1"
FUNCTION = "Invoke-WinasyncPoll"
# -cnotmatch in the script: case-sensitive
JOB_NAME_RE = re.compile(r"^j[0-9]{1,12}\.[0-9]+$")
SUMMARY_KEYS = (
    "started",
    "finished",
    "failed",
    "rc",
    "msg",
    "changed",
    "ansible_async_watchdog_pid",
    "stdout",
    "stderr",
)
INT32_MAX = 2**31 - 1


class PollScriptError(Exception):
    """What makes the real script stop (``$ErrorActionPreference = 'Stop'``)."""


def _first_line_is(text: str, marker: str) -> bool:
    lines = text.lstrip("\ufeff").splitlines()
    return bool(lines) and lines[0].strip() == marker


def is_poll_script(text: str) -> bool:
    """The whole poll script, sent as a script."""
    return _first_line_is(text, MARKER)


def is_define_script(text: str) -> bool:
    """The script that defines the poll as a global function (success, no output)."""
    return _first_line_is(text, DEFINE_MARKER)


def is_poll_command(command: Command) -> bool:
    """A call of the defined function; command names are case-insensitive."""
    return not command.is_script and command.text.strip().casefold() == FUNCTION.casefold()


def run_poll(host: SimHost, params: Mapping[str, Any]) -> PipelineResult:
    """One poll pipeline: one JSON string out, or a failed pipeline like the script's throw."""
    try:
        answer = poll(
            host,
            async_dir=_param(params, "AsyncDir"),
            known=_param(params, "Known"),
            pids=_param(params, "Pids"),
            only=_param(params, "Only"),
            max_bytes=_param(params, "MaxBytes"),
        )
    except PollScriptError as exc:
        return PipelineResult.failure(str(exc))
    return PipelineResult(output=[convert_to_json(answer, edition=host.ps_edition)])


def _param(params: Mapping[str, Any], name: str) -> str:
    """A ``[string]`` parameter: unbound is the empty string; names bind case-insensitively."""
    for key, value in params.items():
        if key.casefold() == name.casefold():
            return "" if value is None else str(value)
    return ""


def _from_json(text: str, name: str) -> Any:
    if not text.strip():
        raise PollScriptError(
            "Cannot bind argument to parameter 'InputObject' because it is an empty string."
            f" (parameter {name})"
        )
    try:
        return json.loads(text)
    except ValueError as exc:
        raise PollScriptError(f"Invalid JSON primitive in parameter {name}: {exc}") from exc


def _as_list(value: Any) -> list[Any]:
    """``foreach`` over ConvertFrom-Json output: an array's items, a scalar once, null never."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _to_int(value: Any) -> int:
    """``[int]$value``: rounds half to even, fails outside Int32."""
    try:
        number = round(float(value)) if not isinstance(value, int) else value
    except (TypeError, ValueError) as exc:
        raise PollScriptError(f'Cannot convert value "{value}" to type "System.Int32".') from exc
    if isinstance(value, bool) or not -(2**31) <= number <= INT32_MAX:
        raise PollScriptError(f'Cannot convert value "{value}" to type "System.Int32".')
    return int(number)


def poll(
    host: SimHost, *, async_dir: str, known: str, pids: str, only: str, max_bytes: str
) -> dict[str, Any]:
    now_ms = host.now_ms()
    boot_ms = host.boot_ms
    try:
        max_length = int(max_bytes.strip(), 10)
    except ValueError as exc:
        raise PollScriptError(f'Cannot convert MaxBytes "{max_bytes}" to System.Int64.') from exc
    cut = min(INT32_MAX, math.floor(max_length / 4))

    known_keys: dict[str, str] = {}
    known_obj = _from_json(known, "Known")
    if isinstance(known_obj, dict):
        known_keys = {str(k): _ps_string(v) for k, v in known_obj.items()}
    only_names = {_ps_string(n) for n in _as_list(_from_json(only, "Only"))}

    # 1. processes first (see the spec: never "dead with an unfinished file" by a race)
    procs: dict[str, int | None] = {}
    for value in _as_list(_from_json(pids, "Pids")):
        pid = _to_int(value)
        procs[str(pid)] = host.process_start_ms(pid)

    # 2. list, 3. read new or changed, 4. gone
    expanded = host.expand(async_dir)
    local = host.to_local(expanded) if expanded else None
    exists = local is not None and local.is_dir()
    entries = _list_files(local) if exists and local is not None else []

    files: list[dict[str, Any]] = []
    present: set[str] = set()
    for path in entries:
        name = path.name
        if not JOB_NAME_RE.match(name):
            continue
        present.add(name)
        if only_names and name not in only_names:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            # gone between listing and stat: not listed at all
            present.discard(name)
            continue
        size = st.st_size
        mtime_ms = st.st_mtime_ns // 1_000_000
        if known_keys.get(name) == f"{size}:{mtime_ms}":
            continue
        entry: dict[str, Any] = {
            "name": name,
            "size": size,
            "mtime_ms": mtime_ms,
            "ctime_ms": host.ctime_ms(path, st),
            "content": None,
            "summary": None,
            "error": None,
        }
        win_path = f"{expanded.rstrip(chr(92))}\\{name}"
        data: bytes | None = None
        if host.is_locked(win_path):
            entry["error"] = _open_error(
                f"The process cannot access the file '{win_path}' because it is being used by"
                " another process."
            )
        else:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                entry["error"] = _open_error(f"Could not find file '{win_path}'.")
            except OSError as exc:
                entry["error"] = _open_error(f"{exc.strerror}: '{win_path}'")
        if data is not None:
            if len(data) > max_length:
                entry["summary"] = summarize(data, cut)
            else:
                entry["content"] = base64.b64encode(data).decode("ascii")
        files.append(entry)

    gone = [name for name in known_keys if name not in present]
    return {
        "v": 1,
        "dir": expanded,
        "exists": exists,
        "now_ms": now_ms,
        "boot_ms": boot_ms,
        "files": files,
        "gone": gone,
        "procs": procs,
    }


def _open_error(message: str) -> str:
    return f'Exception calling "Open" with "4" argument(s): "{message}"'


def _ps_string(value: Any) -> str:
    """``[string]$x`` of a JSON value (bools print as True/False, null as empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _list_files(directory: Path) -> list[Path]:
    """``DirectoryInfo.GetFiles()``: files only, in NTFS's (case-insensitive) name order."""
    try:
        with os.scandir(directory) as it:
            names = [e.name for e in it if e.is_file()]
    except FileNotFoundError:
        return []
    return [directory / n for n in sorted(names, key=lambda n: (n.casefold(), n))]


def decode_job_bytes(data: bytes) -> str:
    """``ConvertFrom-JobBytes``: skip a UTF-8 BOM, strict UTF-8, else the ANSI code page."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode(ANSI_CODEPAGE, errors="replace")


def summarize(data: bytes, cut: int) -> dict[str, Any] | None:
    """``Get-JobSummary``: the client's keys of a big file; None when it does not parse."""
    try:
        job = json.loads(decode_job_bytes(data).strip())
    except ValueError:
        return None
    if not isinstance(job, dict):
        return None
    summary: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        value = job.get(key)
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if isinstance(value, str) and key in ("stdout", "stderr"):
            if cut < 0:  # $value.Substring(0, $cut) throws
                raise PollScriptError("Length cannot be less than zero. (Parameter 'length')")
            value = cut_utf16(value, cut)
        summary[key] = value
    return summary


def cut_utf16(text: str, limit: int) -> str:
    """``$s.Substring(0, n)`` counted in UTF-16 units, never ending on half a surrogate pair."""
    units = text.encode("utf-16-le", errors="surrogatepass")
    if len(units) // 2 <= limit:
        return text
    end = limit
    if end > 0:
        last = int.from_bytes(units[(end - 1) * 2 : end * 2], "little")
        if 0xD800 <= last <= 0xDBFF:
            end -= 1
    return units[: end * 2].decode("utf-16-le", errors="surrogatepass")
