"""Job file bytes exactly as ansible-core's Windows async wrapper and watchdog write them.

Two generations (see the facts doc, "The job file on a Windows host"):
- ``2.18`` (2.15-2.18): ``started``/``finished`` are ints; both writes are ``Set-Content`` without
  ``-Encoding`` from Windows PowerShell 5.1: the ANSI code page (cp1252), no BOM, CRLF at the end.
- ``2.19-ps51`` / ``2.19-pwsh7`` (2.19-2.21): bools; the initial write is ``WriteAllText`` (UTF-8,
  no BOM, no newline); the final one ``Set-Content -Encoding UTF8``: with a BOM on 5.1, without
  on pwsh 7, CRLF at the end either way.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, get_args

log = logging.getLogger(__name__)

Generation = Literal["2.18", "2.19-ps51", "2.19-pwsh7"]
GENERATIONS: tuple[Generation, ...] = get_args(Generation)

ANSI_CODEPAGE = "cp1252"
UTF8_BOM = b"\xef\xbb\xbf"
CRLF = b"\r\n"

TIMEOUT_MSG_218 = "timed out waiting for module completion"
TIMEOUT_MSG_219 = "failure during async watchdog: timed out waiting for module completion"
# what async_watchdog.ps1 (2.19+) puts in `exception` for its own timeout throw
TIMEOUT_EXCEPTION_219 = "\r\n".join(
    [
        "timed out waiting for module completion",
        "At line:107 char:9",
        '+         throw "timed out waiting for module completion"',
        "+         ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
        "+ CategoryInfo          : OperationStopped: "
        "(timed out waiting for module completion:String) [], RuntimeException",
        "+ FullyQualifiedErrorId : timed out waiting for module completion",
        "",
        "ScriptStackTrace:",
        "at <ScriptBlock>, <No file>: line 107",
    ]
)

# ConvertTo-Json on Windows PowerShell 5.1 (JavaScriptSerializer) escapes these HTML characters.
_PS51_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "'": "\\u0027", "&": "\\u0026"}
_PWSH7_ESCAPES = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def is_legacy(generation: Generation) -> bool:
    return generation == "2.18"


def convert_to_json(obj: Any, *, edition: Literal["5.1", "7"] = "5.1") -> str:
    """``ConvertTo-Json -Compress``: compact, non-ASCII kept, the edition's own escapes."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    escapes = _PS51_ESCAPES if edition == "5.1" else _PWSH7_ESCAPES
    for char, escaped in escapes.items():
        if char in text:  # these only ever occur inside JSON strings
            text = text.replace(char, escaped)
    return text


def _edition(generation: Generation) -> Literal["5.1", "7"]:
    return "7" if generation == "2.19-pwsh7" else "5.1"


def initial_record(
    jid: str, results_file: str, watchdog_pid: int, generation: Generation
) -> dict[str, Any]:
    legacy = is_legacy(generation)
    return {
        "started": 1 if legacy else True,
        "finished": 0 if legacy else False,
        "results_file": results_file,
        "ansible_job_id": jid,
        "_ansible_suppress_tmpdir_delete": True,
        "ansible_async_watchdog_pid": watchdog_pid,
    }


def final_record(
    initial: Mapping[str, Any], module_result: Mapping[str, Any], generation: Generation
) -> dict[str, Any]:
    """``$result.finished = 1|$true; $result + $moduleResult``."""
    record = dict(initial)
    record["finished"] = 1 if is_legacy(generation) else True
    record.update(module_result)
    return record


def timeout_record(initial: Mapping[str, Any], generation: Generation) -> dict[str, Any]:
    record = dict(initial)
    if is_legacy(generation):
        record["finished"] = 1
        record["failed"] = True
        record["msg"] = TIMEOUT_MSG_218
    else:
        record["finished"] = True
        record["exception"] = TIMEOUT_EXCEPTION_219
        record["failed"] = True
        record["msg"] = TIMEOUT_MSG_219
        record["stdout"] = None  # $jobOutput was never set
        record["stderr"] = ""  # $null | Out-String
    return record


def encode_initial(
    record: Mapping[str, Any], generation: Generation, *, codepage: str = ANSI_CODEPAGE
) -> bytes:
    """``codepage``: the host's ANSI code page, which Set-Content uses on 5.1 (2.15-2.18)."""
    return _encode(record, generation, codepage, final=False)


def encode_final(
    record: Mapping[str, Any], generation: Generation, *, codepage: str = ANSI_CODEPAGE
) -> bytes:
    return _encode(record, generation, codepage, final=True)


def _encode(
    record: Mapping[str, Any], generation: Generation, codepage: str, *, final: bool
) -> bytes:
    """Legacy files: the ANSI code page and CRLF, first write and last alike. 2.19: the first
    write is bare UTF-8; the final one ends with CRLF, after a BOM on 5.1."""
    text = convert_to_json(record, edition=_edition(generation))
    if is_legacy(generation):
        return text.encode(codepage, errors="replace") + CRLF
    if not final:
        return text.encode("utf-8")
    body = text.encode("utf-8") + CRLF
    return UTF8_BOM + body if generation == "2.19-ps51" else body


def decode_job_file(data: bytes) -> dict[str, Any] | None:
    """The client's rule: strip a BOM, UTF-8 else ANSI, strip, parse; None when unparsable."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode(ANSI_CODEPAGE, errors="replace")
    text = text.strip()
    return json_object(text) if text else None


def json_object(text: str) -> dict[str, Any] | None:
    """The JSON object ``text`` holds; None when it is no JSON or not an object."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


WriteStep = Literal["empty", "partial"]


async def write_nonatomic(
    write: Callable[[bytes], None],
    data: bytes,
    *,
    between: Callable[[WriteStep], Awaitable[None]] | None = None,
    partial_fraction: float = 0.5,
) -> None:
    """Write like ``Set-Content``: truncate, then part of the bytes, then all of them.

    ``between(step)`` runs after each visible intermediate state, so a caller can pause there
    (``empty``: a zero-length file; ``partial``: a cut JSON) while readers look.
    """
    write(b"")
    if between is not None:
        await between("empty")
    else:
        await asyncio.sleep(0)
    if len(data) >= 2:
        cut = min(max(int(len(data) * partial_fraction), 1), len(data) - 1)
        write(data[:cut])
        if between is not None:
            await between("partial")
        else:
            await asyncio.sleep(0)
    write(data)
