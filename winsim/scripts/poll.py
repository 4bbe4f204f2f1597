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

import asyncio
import base64
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from winsim.api import Command, PipelineResult
from winsim.host import MemoryQuotaExceededError
from winsim.jobfiles import UTF8_BOM, convert_to_json

if TYPE_CHECKING:
    from winsim.host import SimHost

log = logging.getLogger(__name__)

MARKER = "# winasync-eda-poll v1"
DEFINE_MARKER = "# winasync-eda-poll-define v1"
FUNCTION = "Invoke-WinasyncPoll"
# -cnotmatch in the script: case-sensitive
JOB_NAME_RE = re.compile(r"^j[0-9]{1,12}\.[0-9]+$")
# The parameters, in the script's param block order.
PARAMETERS = ("AsyncDir", "Known", "Pids", "Only", "MaxBytes", "MaxAnswer", "Wait", "Seen")
# Sizes the script declares too ($HeadBytes ...): tests/unit/test_poll_twins.py compares them.
HEAD_BYTES = 65536
TAIL_BYTES = 65536
MSG_CHARS = 2048
SUMMARY_COST = 16384
ENTRY_COST = 256
# $WaitStepMs: a waiting poll checks the host this often
WAIT_STEP_MS = 1000
# Get-JobSummary: the scalar keys, then msg
SUMMARY_FLAGS = ("started", "finished", "failed", "rc", "changed", "ansible_async_watchdog_pid")
SUMMARY_KEYS = (*SUMMARY_FLAGS, "msg")
_WS = "[ \\t\\r\\n]*"  # JSON's whitespace, as the script's patterns spell it
_MSG_RE = re.compile(r"[{,]" + _WS + r'"msg"' + _WS + ":" + _WS + r'"((?:[^"\\]|\\.)*)"')
INT32_MAX = 2**31 - 1
UNSUPPORTED = (
    "winasync-eda-poll: unsupported: the session runs in {mode} (App Control or AppLocker):"
    " deploy the signed poll script and set poll_script"
)
# what the script throws when the async dir cannot be listed (only "not found" is no error)
DIR_UNEXPANDED = (
    "winasync-eda-poll: the async dir '{dir}' names an environment variable this host does not"
    " define (not expanded)"
)
DIR_NOT_ROOTED = "winasync-eda-poll: the async dir '{dir}' is not an absolute path"
DIR_DENIED = "winasync-eda-poll: access to the async dir '{dir}' is denied"
DIR_UNLISTABLE = "winasync-eda-poll: the async dir '{dir}' cannot be listed: "
_DECIMAL_RE = re.compile(r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)\s*$")
_UNEXPANDED_RE = re.compile(r"%[^%\\]+%")
_ROOTED_RE = re.compile(r"^([A-Za-z][:][\\/]|[\\/]{2})")
# poll_working_set's model
RUNSPACE_BYTES = 40 * 1024 * 1024
MEMORY_FACTOR = 10


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


async def run_script_file(host: SimHost, command: Command) -> PipelineResult | None:
    """A script file invoked by path (``add_cmdlet('C:\\...\\poll.ps1')``): the poll when the
    file is the poll script, in the language mode its signature gives; None for other files."""
    path = command.text.strip()
    if command.is_script or not path.casefold().endswith(".ps1") or not _ROOTED_RE.match(path):
        return None
    local = host.to_local(path)
    if local is None or not local.is_file():
        return PipelineResult.failure(
            f"The term '{path}' is not recognized as the name of a cmdlet, function, script"
            " file, or operable program. Check the spelling of the name, or if a path was"
            " included, verify that the path is correct and try again."
        )
    text = local.read_bytes().decode("utf-8-sig", errors="replace")
    if not is_poll_script(text):
        return None
    return await run_poll(host, command.named(), host.script_language_mode(path, text))


async def run_poll(
    host: SimHost, params: Mapping[str, Any], language_mode: str | None = None
) -> PipelineResult:
    """One poll pipeline: one JSON string out, or a failed pipeline like the script's throw.

    ``language_mode``: the mode the script runs in (a signed file run by path); None: the
    session's own. With ``Wait`` it first waits for a change (``wait_for_change``); a stop
    (the pipeline's task cancelled) ends the wait at once."""
    mode = language_mode or host.language_mode
    if mode != "FullLanguage":  # the script's first check, before any method call
        return PipelineResult.failure(UNSUPPORTED.format(mode=mode))
    state = _bound(params, "AsyncDir", "Known", "Pids", "Only")
    try:
        await wait_for_change(host, **state, **_bound(params, "Wait", "Seen"))
        answer = poll(host, **state, **_bound(params, "MaxBytes", "MaxAnswer"))
    except (PollScriptError, MemoryQuotaExceededError) as exc:
        return PipelineResult.failure(str(exc))
    return PipelineResult(output=[convert_to_json(answer, edition=host.ps_edition)])


def _bound(params: Mapping[str, Any], *names: str) -> dict[str, str]:
    """The script's parameters as the twin's keyword arguments: ``MaxBytes`` binds ``max_bytes``."""
    return {
        re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower(): _param(params, name) for name in names
    }


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


def _to_long(value: Any) -> int:
    """``[long]$value``: rounds half to even, fails outside Int64."""
    try:
        number = round(float(value)) if not isinstance(value, int) else value
    except (TypeError, ValueError) as exc:
        raise PollScriptError(f'Cannot convert value "{value}" to type "System.Int64".') from exc
    if isinstance(value, bool) or not -(2**63) <= number < 2**63:
        raise PollScriptError(f'Cannot convert value "{value}" to type "System.Int64".')
    return int(number)


def _parse_long(text: str, name: str) -> int:
    """``[long]::Parse($x, InvariantCulture)``."""
    try:
        return int(text.strip(), 10)
    except ValueError as exc:
        raise PollScriptError(f'Cannot convert {name} "{text}" to System.Int64.') from exc


def poll(
    host: SimHost,
    *,
    async_dir: str,
    known: str,
    pids: str,
    only: str,
    max_bytes: str,
    max_answer: str,
) -> dict[str, Any]:
    now_ms = host.now_ms()
    boot_ms = host.boot_ms
    max_length = _parse_long(max_bytes, "MaxBytes")
    budget = _parse_long(max_answer, "MaxAnswer")
    spent = 0
    full = False
    read_bytes = 0

    known_keys = _known_keys(known)
    only_names = {_ps_string(n) for n in _as_list(_from_json(only, "Only"))}

    # 1. processes first (see the spec: never "dead with an unfinished file" by a race)
    procs: dict[str, int | None] = {}
    for value in _as_list(_from_json(pids, "Pids")):
        pid = _to_long(value)
        procs[str(pid)] = host.process_start_ms(pid) if 0 <= pid <= INT32_MAX else None

    # 2. list, 3. read new or changed, 4. gone
    expanded = host.expand(async_dir)
    local = _async_dir(host, expanded)
    exists = local is not None
    entries = _list_files(local) if local is not None else []

    files: list[dict[str, Any]] = []
    deferred: list[str] = []
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
        # the byte budget: once a file does not fit, it and every later one wait
        cost = SUMMARY_COST if size > max_length else (size + 2) // 3 * 4 + ENTRY_COST
        if full or (files and spent + cost > budget):
            full = True
            deferred.append(name)
            continue
        spent += cost
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
        if host.is_locked(win_path):
            entry["error"] = _open_error(
                f"The process cannot access the file '{win_path}' because it is being used by"
                " another process."
            )
        else:
            try:
                data, tail = _read(path, size, max_length)
                host.hold_read(win_path)
            except FileNotFoundError:
                entry["error"] = _open_error(f"Could not find file '{win_path}'.")
            except OSError as exc:
                entry["error"] = _open_error(f"{exc.strerror}: '{win_path}'")
            else:
                read_bytes += len(data) + len(tail)
                if size <= max_length:
                    entry["content"] = base64.b64encode(data).decode("ascii")
                else:
                    entry["summary"] = summarize(data, tail)
        files.append(entry)

    gone = [name for name in known_keys if name not in present]
    answer = {
        "v": 1,
        "dir": expanded,
        "exists": exists,
        "now_ms": now_ms,
        "boot_ms": boot_ms,
        # [Text.Encoding]::Default: the ANSI code page on 5.1, UTF-8 (65001) on 7
        "ansi_cp": 65001 if host.ps_edition == "7" else host.ansi_codepage,
        "files": files,
        "gone": gone,
        "deferred": deferred,
        "procs": procs,
    }
    host.charge_memory(poll_working_set(read_bytes), "the poll")
    return answer


async def wait_for_change(
    host: SimHost, *, async_dir: str, known: str, pids: str, only: str, wait: str, seen: str
) -> None:
    """Step 0 of the script: with ``Wait`` > 0 s, return once the host differs from what the
    client last saw (``Known``, ``Seen``), checking every ``WAIT_STEP_MS``, or when ``Wait``
    runs out. Waits on the event loop, without a thread, so one process holds thousands."""
    wait_ms = round(_parse_decimal(wait, "Wait") * 1000) if wait else 0
    expanded = host.expand(async_dir)
    if wait_ms <= 0 or _UNEXPANDED_RE.search(expanded) or not _ROOTED_RE.match(expanded):
        return
    known_keys = _known_keys(known)
    only_names = {_ps_string(n) for n in _as_list(_from_json(only, "Only"))}
    pid_list = [_to_long(v) for v in _as_list(_from_json(pids, "Pids"))]
    seen_obj = _from_json(seen, "Seen") if seen else None
    seen_procs = {str(k): v for k, v in seen_obj.items()} if isinstance(seen_obj, dict) else {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_ms / 1000
    host.waiting_polls += 1
    host.peak_waiting_polls = max(host.peak_waiting_polls, host.waiting_polls)
    try:
        while not host_changed(host, expanded, known_keys, only_names, pid_list, seen_procs):
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(WAIT_STEP_MS / 1000, left))
    finally:
        host.waiting_polls -= 1


def host_changed(
    host: SimHost,
    expanded: str,
    known_keys: Mapping[str, str],
    only_names: set[str],
    pid_list: list[int],
    seen_procs: dict[str, Any],
) -> bool:
    """``Test-HostChanged``: a watchdog's state unlike ``Seen`` (a pid absent from it takes the
    state of the first check), or a job file new, changed or gone against ``Known``; an
    unlistable directory counts as changed."""
    for pid in pid_list:
        key = str(pid)
        state = host.process_start_ms(pid) if 0 <= pid <= INT32_MAX else None
        if key not in seen_procs:
            # the client has no state for it yet (a job it has just read): this one is it
            seen_procs[key] = state
            continue
        before = seen_procs[key]
        if (state is None) != (before is None) or (state is not None and state != _to_long(before)):
            return True
    try:
        local = _async_dir(host, expanded)
    except PollScriptError:
        return True
    matched = 0
    for path in _list_files(local) if local is not None else []:
        name = path.name
        if not JOB_NAME_RE.match(name) or (only_names and name not in only_names):
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if known_keys.get(name) != f"{st.st_size}:{st.st_mtime_ns // 1_000_000}":
            return True
        matched += 1
    return matched != len(known_keys)


def _parse_decimal(text: str, name: str) -> float:
    """``[decimal]::Parse($x, InvariantCulture)``: digits with an optional point, no exponent."""
    if not _DECIMAL_RE.match(text):
        raise PollScriptError(f'Cannot convert {name} "{text}" to System.Decimal.')
    return float(text.strip())


def _known_keys(known: str) -> dict[str, str]:
    known_obj = _from_json(known, "Known")
    if isinstance(known_obj, dict):
        return {str(k): _ps_string(v) for k, v in known_obj.items()}
    return {}


def poll_working_set(read_bytes: int) -> int:
    """What a poll that read ``read_bytes`` of job files holds at its peak on Windows PowerShell.

    A model, not a measurement: the runspace itself, then per byte read the byte[] buffer, its
    base64 string (UTF-16, 8/3 bytes), the entry in the answer list, the answer's JSON text and
    ConvertTo-Json's StringBuilder (UTF-16, twice over), and the CLIXML of the output string:
    about ten times the bytes read, as the issue measured it.
    """
    return RUNSPACE_BYTES + MEMORY_FACTOR * read_bytes


def _async_dir(host: SimHost, expanded: str) -> Path | None:
    """The async dir on disk; None when not found; PollScriptError for any other failure."""
    if _UNEXPANDED_RE.search(expanded):
        raise PollScriptError(DIR_UNEXPANDED.format(dir=expanded))
    if not _ROOTED_RE.match(expanded):
        raise PollScriptError(DIR_NOT_ROOTED.format(dir=expanded))
    local = host.to_local(expanded)
    if local is None or not local.exists():
        return None  # DirectoryNotFoundException: another drive, or no such directory
    if host.is_denied(expanded):
        raise PollScriptError(DIR_DENIED.format(dir=expanded))
    if not local.is_dir():
        raise PollScriptError(
            DIR_UNLISTABLE.format(dir=expanded) + "The directory name is invalid."
        )
    return local


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


def _read(path: Path, size: int, max_length: int) -> tuple[bytes, bytes]:
    """The script's reads: ``size`` bytes in one pre-sized read, or the head and tail of a file
    larger than ``max_length`` (fewer bytes when the file shrank since it was listed)."""
    with path.open("rb") as stream:
        if size <= max_length:
            return stream.read(size), b""
        head = stream.read(HEAD_BYTES)
        if size <= HEAD_BYTES:
            return head, b""
        count = min(size - HEAD_BYTES, TAIL_BYTES)
        try:
            stream.seek(-count, os.SEEK_END)
        except OSError as exc:  # FileStream.Seek before the start: IOException
            raise OSError(
                exc.errno,
                "An attempt was made to move the position before the beginning of the stream",
            ) from exc
        return head, stream.read(count)


def summarize(head: bytes, tail: bytes) -> dict[str, Any] | None:
    """``Get-JobSummary``: the outcome keys of a file too large to read, from its two ends;
    None while the file does not end as a JSON object does (half-written)."""
    if head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM) :]
    texts = (head.decode("utf-8", errors="replace"), tail.decode("utf-8", errors="replace"))
    last = texts[1] if tail else texts[0]
    if not last.rstrip(" \t\r\n").endswith("}"):
        return None
    summary: dict[str, Any] = {}
    for key in SUMMARY_FLAGS:
        summary[key] = None
        pattern = re.compile(
            "[{,]" + _WS + f'"{key}"' + _WS + ":" + _WS + "(true|false|null|-?[0-9]{1,18})(?![0-9])"
        )
        for text in texts:
            match = pattern.search(text)
            if match:
                token = match.group(1)
                summary[key] = {"true": True, "false": False, "null": None}.get(token)
                if token not in ("true", "false", "null"):
                    summary[key] = int(token)
                break
    summary["msg"] = None
    for text in texts:
        match = _MSG_RE.search(text)
        if match:
            try:
                value = json.loads('{"m":"' + match.group(1) + '"}')["m"]
            except ValueError:
                value = None
            summary["msg"] = cut_utf16(value, MSG_CHARS) if isinstance(value, str) else value
            break
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
