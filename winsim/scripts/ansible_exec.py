"""What ansible-core 2.19-2.21's psrp connection sends, carried out on a simulated host.

Every module run is ``bootstrap_wrapper.ps1`` fed three input lines: the exec wrapper as JSON,
``"\\0\\0\\0\\0"``, and the exec manifest ``{"scripts", "actions", "signed_hashlist"}``. The
script text differs between versions, so a run is recognised by that input and its action names.
Simulated: ``win_ping``, ``ansible.windows.async_status`` (status, cleanup) and an async
``win_shell``/``win_command`` (``async_wrapper.ps1`` + ``async_watchdog.ps1`` +
``module_wrapper.ps1``) made of ``Start-Sleep``, ``exit`` and ``Write-Output``/``echo``; also the
temp dir helpers ``powershell_mkdtemp.ps1`` and ``powershell_expand_user.ps1``.
"""

from __future__ import annotations

import json
import logging
import ntpath
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from winsim.api import PipelineRequest, PipelineResult
from winsim.jobfiles import UTF8_BOM, convert_to_json, json_object
from winsim.jobs import JobSpec, Outcome, start

if TYPE_CHECKING:
    from winsim.host import SimHost

log = logging.getLogger(__name__)

SEPARATOR = "\0\0\0\0"
NOT_SIMULATED = "winsim: not simulated"


@dataclass(frozen=True)
class ExecPayload:
    bootstrap: dict[str, Any]
    manifest: dict[str, Any]
    extra_input: list[Any] = field(default_factory=list)

    @property
    def actions(self) -> list[dict[str, Any]]:
        actions = self.manifest.get("actions")
        return [a for a in actions if isinstance(a, dict)] if isinstance(actions, list) else []

    @property
    def action_names(self) -> list[str]:
        return [str(a.get("name")) for a in self.actions]

    def params(self, action: str) -> dict[str, Any]:
        for a in self.actions:
            if a.get("name") == action and isinstance(a.get("params"), dict):
                return dict(a["params"])
        return {}


def _line(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _json_object(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json_object(text)


def parse_exec_payload(request: PipelineRequest) -> ExecPayload | None:
    """The exec payload of a module run, or None when the input is not one."""
    lines = request.input
    if len(lines) < 3 or _line(lines[1]) != SEPARATOR:
        return None
    bootstrap = _json_object(_line(lines[0]))
    manifest = _json_object(_line(lines[2]))
    if bootstrap is None or manifest is None:
        return None
    if bootstrap.get("name") != "exec_wrapper" or "script" not in bootstrap:
        return None
    if not isinstance(manifest.get("actions"), list) or not isinstance(
        manifest.get("scripts"), dict
    ):
        return None
    return ExecPayload(bootstrap, manifest, list(lines[3:]))


def _module_name(script: str) -> str:
    """``ansible_collections.ansible.windows.plugins.modules.win_ping.ps1`` -> FQCN."""
    name = script.removesuffix(".ps1")
    parts = name.split(".")
    if (
        len(parts) >= 6
        and parts[0] == "ansible_collections"
        and parts[3:5] == ["plugins", "modules"]
    ):
        return ".".join([parts[1], parts[2], *parts[5:]])
    return name


def _complex_args(module_params: Mapping[str, Any]) -> dict[str, Any]:
    for variable in module_params.get("Variables") or []:
        if isinstance(variable, dict) and variable.get("Name") == "complex_args":
            value = variable.get("Value")
            return dict(value) if isinstance(value, dict) else {}
    return {}


def _module_output(result: Mapping[str, Any], rc: int, host: SimHost) -> PipelineResult:
    return PipelineResult(output=[convert_to_json(result, edition=host.ps_edition)], exit_code=rc)


async def run_exec(host: SimHost, payload: ExecPayload) -> PipelineResult:
    names = payload.action_names
    if names == ["powershell_mkdtemp.ps1"]:
        return _mkdtemp(host, payload.params(names[0]))
    if names == ["powershell_expand_user.ps1"]:
        return _expand_user(host, payload.params(names[0]))
    if names == ["async_wrapper.ps1", "async_watchdog.ps1", "module_wrapper.ps1"]:
        return _async_start(host, payload)
    if names == ["module_wrapper.ps1"]:
        module_params = payload.params("module_wrapper.ps1")
        module = _module_name(str(module_params.get("Script", "")))
        args = _complex_args(module_params)
        if module == "ansible.windows.win_ping":
            return _win_ping(host, args)
        if module == "ansible.windows.async_status":
            return _async_status(host, args)
        return PipelineResult.failure(f"{NOT_SIMULATED}: module {module}")
    return PipelineResult.failure(f"{NOT_SIMULATED}: ansible exec actions {', '.join(names)}")


# -- modules ------------------------------------------------------------------------------------


def _win_ping(host: SimHost, args: Mapping[str, Any]) -> PipelineResult:
    data = args.get("data", "pong")
    if data == "crash":
        return _unhandled(host, "boom")
    result: dict[str, Any] = {"changed": False, "ping": data}
    if args.get("_ansible_inject_invocation"):
        result["invocation"] = {"module_args": {"data": data}}
    return _module_output(result, 0, host)


def _unhandled(host: SimHost, error: str) -> PipelineResult:
    """module_wrapper.ps1's ``Write-AnsibleErrorDetail -ForModule`` for an uncaught error."""
    exception = "\r\n".join(
        [
            error,
            "At line:1 char:1",
            f"+ CategoryInfo          : OperationStopped: ({error}:String) []",
        ]
    )
    result = {
        "failed": True,
        "msg": f"Unhandled exception while executing module: {error}",
        "exception": exception,
    }
    return _module_output(result, 1, host)


def _fail_json(host: SimHost, obj: Mapping[str, Any], message: str) -> PipelineResult:
    """Ansible.ModuleUtils.Legacy ``Fail-Json``: msg, failed, changed; ``Exit 1``."""
    result = dict(obj)
    result["msg"] = message
    result["failed"] = True
    result.setdefault("changed", False)
    return _module_output(result, 1, host)


def _exit_json(host: SimHost, obj: Mapping[str, Any]) -> PipelineResult:
    result = dict(obj)
    result.setdefault("changed", False)
    return _module_output(result, 0, host)


def _read_text(host: SimHost, data: bytes) -> str:
    """``Get-Content``: a BOM decides; else ANSI on Windows PowerShell 5.1, UTF-8 on 7."""
    if data.startswith(UTF8_BOM):
        return data[len(UTF8_BOM) :].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    encoding = "utf-8" if host.ps_edition == "7" else host.ansi_encoding
    return data.decode(encoding, errors="replace")


_UNPARSABLE = object()


def _async_status(host: SimHost, args: Mapping[str, Any]) -> PipelineResult:
    """ansible.windows 3.8.0 ``plugins/modules/async_status.ps1``."""
    results: dict[str, Any] = {"changed": False}
    jid = args.get("jid")
    if jid is None:
        return _fail_json(host, results, "Get-AnsibleParam: Missing required argument: jid")
    jid = str(jid)
    mode = args.get("mode", "status")
    if mode not in ("status", "cleanup"):
        return _fail_json(
            host,
            {},
            f"Get-AnsibleParam: Argument mode needs to be one of status,cleanup but was {mode}.",
        )
    raw_dir = args.get("_async_dir")
    if raw_dir is None:
        return _fail_json(host, {}, "Get-AnsibleParam: Missing required argument: _async_dir")
    async_dir = host.expand(str(raw_dir))
    log_path = ntpath.join(async_dir, jid)
    local = host.to_local(log_path)
    if local is None or not local.exists():
        return _fail_json(
            host,
            {"ansible_job_id": jid, "started": 1, "finished": 1},
            f"could not find job at '{async_dir}'",
        )
    if mode == "cleanup":
        if local.is_dir():
            # Remove-Item -Recurse would take a whole tree: not on this host
            return PipelineResult.failure(f"{NOT_SIMULATED}: cleanup of a directory ({log_path})")
        local.unlink()
        host.forget_file(local)
        return _exit_json(host, {"ansible_job_id": jid, "erased": log_path})

    text = _read_text(host, local.read_bytes()) if local.is_file() else ""
    lines = text.splitlines()
    if not "".join(lines).strip():
        # an empty file: not written yet, so it is running
        return _exit_json(
            host, {"results_file": log_path, "ansible_job_id": jid, "started": 1, "finished": 0}
        )
    try:
        parsed = json.loads("\n".join(lines))
    except ValueError:
        parsed = _UNPARSABLE
    if parsed is not _UNPARSABLE and not isinstance(parsed, dict):
        kind = "null-valued expression" if parsed is None else type(parsed).__name__
        return _unhandled(host, f"You cannot call method ContainsKey on a {kind}.")
    data = parsed if isinstance(parsed, dict) else None
    if data is None:
        return _fail_json(
            host,
            {"ansible_job_id": jid, "results_file": log_path, "started": 1, "finished": 1},
            "Could not parse job output: ",
        )
    if "started" not in data:
        data["finished"] = 1
        data["ansible_job_id"] = jid
    elif "finished" not in data:
        data["finished"] = 0
    return _exit_json(host, data)


# -- async win_shell / win_command -------------------------------------------------------------

_STATEMENT_SPLIT = re.compile(r"""((?:'(?:[^']|'')*'|"(?:[^"`]|`.)*"|[^;\r\n'"])+)""")
_SLEEP_RE = re.compile(
    r"^(?:Start-Sleep|sleep)\s+(?:-(?P<unit>Seconds|s|Milliseconds|m)\s+)?(?P<n>\d+(?:\.\d+)?)$",
    re.IGNORECASE,
)
_EXIT_RE = re.compile(r"^exit(?:\s+(?P<rc>-?\d+))?$", re.IGNORECASE)
_OUTPUT_RE = re.compile(r"^(?:Write-Output|Write-Host|echo)\s+(?P<text>.+)$", re.IGNORECASE)
_TOKEN_RE = re.compile(r"""'((?:[^']|'')*)'|"((?:[^"`]|`.)*)"|(\S+)""")


@dataclass
class CommandPlan:
    duration_s: float = 0.0
    rc: int = 0
    stdout: str = ""


class NotSimulatedError(ValueError):
    """A command outside the small vocabulary the simulated host understands."""


def _unquote(token: re.Match[str]) -> str:
    single, double, bare = token.groups()
    if single is not None:
        return single.replace("''", "'")
    if double is not None:
        return re.sub(r"`(.)", r"\1", double)
    return bare or ""


def plan_command(cmd: str) -> CommandPlan:
    """``Start-Sleep -Seconds N``, ``exit N``, ``Write-Output 'text'``/``echo text``, by ``;``."""
    plan = CommandPlan()
    for statement in (m.group(1).strip() for m in _STATEMENT_SPLIT.finditer(cmd)):
        if not statement:
            continue
        if sleep := _SLEEP_RE.match(statement):
            seconds = float(sleep.group("n"))
            if (sleep.group("unit") or "s").lower() in ("milliseconds", "m"):
                seconds /= 1000
            plan.duration_s += seconds
        elif leave := _EXIT_RE.match(statement):
            plan.rc = int(leave.group("rc") or 0)
            break
        elif output := _OUTPUT_RE.match(statement):
            for token in _TOKEN_RE.finditer(output.group("text")):
                plan.stdout += _unquote(token) + "\r\n"
        else:
            raise NotSimulatedError(f"{NOT_SIMULATED}: command {statement!r}")
    return plan


def _async_start(host: SimHost, payload: ExecPayload) -> PipelineResult:
    """What ``async_wrapper.ps1`` returns once the watchdog signalled it started."""
    wrapper = payload.params("async_wrapper.ps1")
    watchdog = payload.params("async_watchdog.ps1")
    module_params = payload.params("module_wrapper.ps1")
    module = _module_name(str(module_params.get("Script", "")))
    if module not in ("ansible.windows.win_shell", "ansible.windows.win_command"):
        return PipelineResult.failure(f"{NOT_SIMULATED}: async module {module}")
    args = _complex_args(module_params)
    raw = args.get("cmd", args.get("_raw_params"))
    if not isinstance(raw, str) or not raw.strip():
        return PipelineResult.failure(f"{NOT_SIMULATED}: {module} without a cmd string")
    cmd = raw.strip()
    try:
        plan = plan_command(cmd)
    except NotSimulatedError as exc:
        return PipelineResult.failure(str(exc))
    outcome: Outcome = "finished" if plan.rc == 0 else "failed"
    timeout = watchdog.get("Timeout")
    try:
        spec = JobSpec(
            outcome=outcome,
            duration_s=plan.duration_s,
            rc=plan.rc,
            stdout=plan.stdout,
            generation="2.19-pwsh7" if host.ps_edition == "7" else "2.19-ps51",
            jid=str(wrapper.get("AsyncJid")) if wrapper.get("AsyncJid") else None,
            timeout_s=float(timeout) if isinstance(timeout, int | float) else None,
            cmd=cmd,
            async_dir=str(wrapper.get("AsyncDir") or r"%USERPROFILE%\.ansible_async"),
        )
        job = start(host, spec)
    except ValueError as exc:
        return PipelineResult.failure(f"winsim: async job not started: {exc}")
    return PipelineResult(output=[convert_to_json(job.initial, edition=host.ps_edition)])


# -- temp dir helpers ---------------------------------------------------------------------------


def _mkdtemp(host: SimHost, params: Mapping[str, Any]) -> PipelineResult:
    parent = host.expand(str(params.get("Directory", "")))
    full = ntpath.join(parent, str(params.get("Name", "")))
    local = host.to_local(full)
    if local is None:
        return PipelineResult.failure(f"{NOT_SIMULATED}: mkdtemp outside C:\\ ({full})")
    local.mkdir(parents=True, exist_ok=False)
    return PipelineResult(output=[host.to_windows(local)])


def _expand_user(host: SimHost, params: Mapping[str, Any]) -> PipelineResult:
    path = str(params.get("Path", ""))
    if path == "~":
        return PipelineResult(output=[host.userprofile])
    if path.startswith("~\\"):
        return PipelineResult(output=[ntpath.join(host.userprofile, path[2:])])
    return PipelineResult(output=[path])


_REMOVE_RE = re.compile(
    r"""^Remove-Item\s+(?P<path>'(?:[^']|'')*'|"[^"]*"|\S+)\s+-Force(?:\s+-Recurse)?\s*$""",
    re.IGNORECASE,
)


def remove_temp_dir(host: SimHost, script: str) -> PipelineResult | None:
    """ansible's ``Remove-Item <tmp> -Force -Recurse``; None when the script is anything else."""
    match = _REMOVE_RE.match(script.strip())
    if match is None:
        return None
    token = _TOKEN_RE.match(match.group("path"))
    win_path = _unquote(token) if token else match.group("path")
    name = ntpath.basename(ntpath.normpath(win_path).rstrip("\\."))
    if not name.lower().startswith("ansible-"):
        return None
    local = host.to_local(win_path)
    if local is not None and local.is_dir():
        shutil.rmtree(local, ignore_errors=True)
    return PipelineResult()
