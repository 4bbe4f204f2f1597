"""What ansible-core's psrp connection sends, built by ansible itself, carried out by the host.

A real ``ansible-playbook`` runs with a connection plugin that is ansible's own psrp plugin minus
the network: each ``_exec_psrp_script(script, input_data)`` goes straight to the simulated host's
executor and is recorded. The recorded payloads are then replayed against a fresh host.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.paths import REPO
from tests.waiting import async_wait_until
from winsim import jobfiles
from winsim.api import Command, PipelineRequest, PipelineResult
from winsim.host import SimHost
from winsim.jobs import WriteControl
from winsim.scripts.dispatch import execute

pytestmark = pytest.mark.sim

COLLECTIONS = Path(os.environ.get("ANSIBLE_COLLECTIONS_PATH", REPO / ".work" / "collections"))
ASYNC_DIR = r"C:\Users\ansible\.ansible_async"

CONNECTION_PLUGIN = '''
from __future__ import annotations

import asyncio
import json
import os

from ansible.plugins.connection import psrp as _psrp

DOCUMENTATION = _psrp.DOCUMENTATION.replace("name: psrp", "name: simpsrp", 1)


class Connection(_psrp.Connection):
    """ansible's psrp plugin; the pipeline goes to winsim's executor instead of the network."""

    transport = "simpsrp"

    def _connect(self):
        self._psrp_host = self.get_option("remote_addr")
        self._connected = True
        return self

    def close(self):
        self._connected = False

    def reset(self):
        pass

    def _exec_psrp_script(self, script, input_data=None, use_local_scope=True, arguments=None):
        from winsim.api import Command, PipelineRequest
        from winsim.host import SimHost
        from winsim.scripts.dispatch import execute

        lines = [str(line) for line in (input_data or [])]
        args = list(arguments or [])
        with open(os.environ["WINSIM_CAPTURE"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"script": script, "input": lines, "arguments": args}) + "\\n")
        host = SimHost(self.get_option("remote_addr"), os.environ["WINSIM_STATE"])
        command = Command(text=script, is_script=True, parameters=[(None, a) for a in args])
        result = asyncio.run(execute(host, PipelineRequest(commands=[command], input=lines)))
        rc = result.exit_code if result.exit_code is not None else (1 if result.failed else 0)
        stdout = "\\r\\n".join(str(o) for o in result.output)
        return rc, stdout.encode(), "\\r\\n".join(result.errors).encode()
'''

CALLBACK_PLUGIN = """
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "winsim_record"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, failed):
        line = {"task": result.task_name, "failed": failed, "result": result.result}
        with open(os.environ["WINSIM_RESULTS"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, default=str) + "\\n")

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result, False)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, True)
"""

PLAYBOOK = r"""
- hosts: win
  gather_facts: false
  tasks:
    - name: ping
      ansible.windows.win_ping:
    - name: start
      ansible.windows.win_shell: "Start-Sleep -Seconds 1; Write-Output 'hello'; exit 3"
      async: 60
      poll: 0
      register: job
    - name: status
      ansible.builtin.async_status:
        jid: "{{ job.ansible_job_id }}"
    - name: cleanup
      ansible.builtin.async_status:
        jid: "{{ job.ansible_job_id }}"
        mode: cleanup
    - name: cleanup again
      ansible.builtin.async_status:
        jid: "{{ job.ansible_job_id }}"
        mode: cleanup
      ignore_errors: true
    - name: raw
      ansible.builtin.raw: Get-Date
      ignore_errors: true
    - name: plain shell
      ansible.windows.win_shell: echo hi
      ignore_errors: true
"""


class Captured:
    def __init__(self, results: dict[str, dict[str, Any]], requests: list[dict[str, Any]]) -> None:
        self.results = results
        self.requests = requests

    def request(self, module: str, mode: str | None = None) -> dict[str, Any]:
        for req in self.requests:
            if len(req["input"]) < 3:
                continue
            manifest = json.loads(req["input"][2])
            for action in manifest["actions"]:
                params = action["params"]
                if action["name"] != "module_wrapper.ps1" or module not in params["Script"]:
                    continue
                args = params["Variables"][0]["Value"]
                if mode is None or args.get("mode") == mode:
                    return req
        raise AssertionError(f"no captured request for {module} {mode}")


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    if not (COLLECTIONS / "ansible_collections" / "ansible" / "windows").is_dir():
        pytest.skip("ansible.windows is not unpacked (make setup)")
    playbook_bin = Path(sys.executable).with_name("ansible-playbook")
    if not playbook_bin.exists():
        found = shutil.which("ansible-playbook")
        if found is None:
            pytest.skip("ansible-playbook not installed")
        playbook_bin = Path(found)
    work = tmp_path_factory.mktemp("ansible")
    (work / "connection_plugins").mkdir()
    (work / "connection_plugins" / "simpsrp.py").write_text(CONNECTION_PLUGIN)
    (work / "callback_plugins").mkdir()
    (work / "callback_plugins" / "winsim_record.py").write_text(CALLBACK_PLUGIN)
    (work / "play.yml").write_text(PLAYBOOK)
    (work / "inventory.ini").write_text(
        "[win]\nwin01 ansible_connection=simpsrp ansible_user=ansible ansible_password=x\n"
    )
    capture = work / "capture.jsonl"
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_CONNECTION_PLUGINS=str(work / "connection_plugins"),
        ANSIBLE_CALLBACK_PLUGINS=str(work / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="winsim_record",
        ANSIBLE_HOME=str(work / "home"),
        ANSIBLE_LOCAL_TEMP=str(work / "tmp"),
        ANSIBLE_NOCOLOR="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        WINSIM_CAPTURE=str(capture),
        WINSIM_STATE=str(work / "state"),
        WINSIM_RESULTS=str(work / "results.jsonl"),
    )
    proc = subprocess.run(
        [str(playbook_bin), "-i", "inventory.ini", "play.yml"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (work / "results.jsonl").read_text(encoding="utf-8").splitlines()
    results = {r["task"]: dict(r["result"], failed=r["failed"]) for r in map(json.loads, lines)}
    requests = [json.loads(line) for line in capture.read_text().splitlines()]
    return Captured(results, requests)


@pytest.fixture
def host(tmp_path: Path) -> SimHost:
    return SimHost("win01", tmp_path)


def replay(req: dict[str, Any]) -> PipelineRequest:
    command = Command(
        text=req["script"], is_script=True, parameters=[(None, a) for a in req["arguments"]]
    )
    return PipelineRequest(commands=[command], input=list(req["input"]))


def edited(
    req: dict[str, Any], action: str, *, args: dict[str, Any] | None = None, **params: Any
) -> dict[str, Any]:
    """The captured request with one action's params (or the module's args) changed."""
    new = copy.deepcopy(req)
    manifest = json.loads(new["input"][2])
    for entry in manifest["actions"]:
        if entry["name"] == action:
            entry["params"].update(params)
            if args is not None:
                entry["params"]["Variables"][0]["Value"].update(args)
    new["input"][2] = json.dumps(manifest)
    return new


def module_json(result: PipelineResult) -> dict[str, Any]:
    assert not result.failed, result.errors
    assert len(result.output) == 1
    value: dict[str, Any] = json.loads(result.output[0])
    return value


# -- the real playbook --


def test_playbook_through_the_simulated_host(captured: Captured) -> None:
    res = captured.results
    assert res["ping"]["ping"] == "pong"
    assert res["ping"]["changed"] is False
    job = res["start"]
    assert job["started"] is True
    assert job["finished"] is False
    assert job["ansible_job_id"].startswith("j")
    assert job["results_file"] == rf"{ASYNC_DIR}\{job['ansible_job_id']}"
    assert isinstance(job["ansible_async_watchdog_pid"], int)
    assert res["status"]["finished"] is False
    assert res["status"]["started"] is True
    assert res["cleanup"]["erased"] == rf"{ASYNC_DIR}\{job['ansible_job_id']}"
    again = res["cleanup again"]
    assert again["failed"] is True
    assert again["msg"] == rf"could not find job at '{ASYNC_DIR}'"
    assert res["raw"]["failed"] is True
    assert "not simulated" in json.dumps(res["raw"])
    assert res["plain shell"]["failed"] is True
    assert "not simulated" in json.dumps(res["plain shell"])


def test_every_module_run_is_the_bootstrap_with_three_input_lines(captured: Captured) -> None:
    modules = [r for r in captured.requests if len(r["input"]) >= 3]
    assert len(modules) >= 6
    for req in modules:
        assert json.loads(req["input"][0])["name"] == "exec_wrapper"
        assert req["input"][1] == "\0\0\0\0"
        assert {"scripts", "actions"} <= set(json.loads(req["input"][2]))


# -- replayed payloads --


async def test_win_ping(captured: Captured, host: SimHost) -> None:
    result = await execute(host, replay(captured.request("win_ping")))
    assert module_json(result) == {"changed": False, "ping": "pong"}
    assert result.exit_code == 0


async def test_async_start_status_cleanup(captured: Captured, host: SimHost) -> None:
    start = captured.request("win_shell")
    wrapper_jid = next(
        a["params"]["AsyncJid"]
        for a in json.loads(start["input"][2])["actions"]
        if a["name"] == "async_wrapper.ps1"
    )
    info = module_json(await execute(host, replay(start)))
    jid = info["ansible_job_id"]
    assert jid == f"{wrapper_jid}.{host.session_pid}"
    assert info["started"] is True
    assert info["finished"] is False
    assert info["_ansible_suppress_tmpdir_delete"] is True
    assert host.process_start_ms(info["ansible_async_watchdog_pid"]) is not None
    path = host.async_dir_path / jid
    assert path.read_bytes() == json.dumps(info, separators=(",", ":")).encode()

    status_req = edited(
        captured.request("async_status", "status"), "module_wrapper.ps1", args={"jid": jid}
    )
    running = module_json(await execute(host, replay(status_req)))
    assert running["finished"] is False
    assert running["changed"] is False

    host.end_job_now(jid)
    await host.job(jid).wait(20)
    done_result = await execute(host, replay(status_req))
    done = module_json(done_result)
    assert done_result.exit_code == 0
    assert done["finished"] is True
    assert done["failed"] is True
    assert done["rc"] == 3
    assert done["stdout"] == "hello\r\n"
    assert done["cmd"] == "Start-Sleep -Seconds 1; Write-Output 'hello'; exit 3"

    cleanup_req = edited(
        captured.request("async_status", "cleanup"), "module_wrapper.ps1", args={"jid": jid}
    )
    erased = module_json(await execute(host, replay(cleanup_req)))
    assert erased == {"ansible_job_id": jid, "erased": rf"{ASYNC_DIR}\{jid}", "changed": False}
    assert not path.exists()
    missing = await execute(host, replay(cleanup_req))
    body = module_json(missing)
    assert missing.exit_code == 1
    assert body["failed"] is True
    assert body["msg"] == rf"could not find job at '{ASYNC_DIR}'"
    assert body["started"] == 1
    assert body["finished"] == 1
    assert body["ansible_job_id"] == jid


async def test_status_of_empty_partial_and_old_files(captured: Captured, host: SimHost) -> None:
    status = captured.request("async_status", "status")
    jid = host.start_job("finished", 0, write=WriteControl(hold=True))
    job = host.job(jid)
    req = replay(edited(status, "module_wrapper.ps1", args={"jid": jid}))
    await async_wait_until(lambda: job.phase == "writing-empty", 20, "phase writing-empty")
    empty = module_json(await execute(host, req))
    assert empty == {
        "results_file": rf"{ASYNC_DIR}\{jid}",
        "ansible_job_id": jid,
        "started": 1,
        "finished": 0,
        "changed": False,
    }
    host.step_write(jid)
    await async_wait_until(lambda: job.phase == "writing-partial", 20, "phase writing-partial")
    partial = await execute(host, req)
    body = module_json(partial)
    assert partial.exit_code == 1
    assert body["failed"] is True
    assert body["msg"] == "Could not parse job output: "
    host.step_write(jid)
    await job.wait(20)

    old = host.start_job("failed", 0, rc=4, generation="2.18", stdout="caf\u00e9")
    await host.job(old).wait(20)
    body = module_json(
        await execute(host, replay(edited(status, "module_wrapper.ps1", args={"jid": old})))
    )
    assert body["finished"] == 1
    assert body["started"] == 1
    assert body["rc"] == 4
    assert body["stdout"] == "caf\u00e9"


async def test_async_timeout_and_unsupported_commands(captured: Captured, host: SimHost) -> None:
    start = captured.request("win_shell")
    timed = edited(start, "async_watchdog.ps1", Timeout=0)
    info = module_json(await execute(host, replay(timed)))
    job = host.job(info["ansible_job_id"])
    await job.wait(20)
    record = jobfiles.decode_job_file(job.path.read_bytes())
    assert record is not None
    assert record["msg"] == jobfiles.TIMEOUT_MSG_219

    other = edited(start, "async_wrapper.ps1", AsyncJid="j77")
    other = edited(other, "module_wrapper.ps1", args={"_raw_params": "Get-Service; exit 1"})
    result = await execute(host, replay(other))
    assert result.failed
    assert "not simulated" in result.errors[0]
    assert "Get-Service" in result.errors[0]

    echo = edited(start, "async_wrapper.ps1", AsyncJid="j78")
    echo = edited(echo, "module_wrapper.ps1", args={"_raw_params": 'echo "a b"; echo c d'})
    info = module_json(await execute(host, replay(echo)))
    host.end_job_now(info["ansible_job_id"])
    job = host.job(info["ansible_job_id"])
    await job.wait(20)
    assert job.final is not None
    assert job.final["stdout"] == "a b\r\nc\r\nd\r\n"
    assert job.final["rc"] == 0


async def test_other_modules_and_actions_are_refused(captured: Captured, host: SimHost) -> None:
    ping = captured.request("win_ping")
    other = edited(
        ping,
        "module_wrapper.ps1",
        Script="ansible_collections.ansible.windows.plugins.modules.win_file.ps1",
    )
    result = await execute(host, replay(other))
    assert result.failed
    assert result.errors == ["winsim: not simulated: module ansible.windows.win_file"]

    from ansible.executor.powershell.module_manifest import _bootstrap_powershell_script

    script, stdin = _bootstrap_powershell_script(
        "psrp_put_file.ps1", {"Path": r"C:\x.txt"}, has_input=True
    )
    put = PipelineRequest([Command(text=script, is_script=True)], input=stdin.decode().splitlines())
    result = await execute(host, put)
    assert result.failed
    assert "psrp_put_file.ps1" in result.errors[0]


async def test_temp_dir_helpers(host: SimHost) -> None:
    from ansible.executor.powershell.module_manifest import _bootstrap_powershell_script
    from ansible.plugins.loader import shell_loader

    script, stdin = _bootstrap_powershell_script(
        "powershell_mkdtemp.ps1", {"Directory": "%TEMP%", "Name": "ansible-tmp-123-456"}
    )
    made = await execute(
        host, PipelineRequest([Command(text=script, is_script=True)], stdin.decode().splitlines())
    )
    tmp = r"C:\Users\ansible\AppData\Local\Temp\ansible-tmp-123-456"
    assert made.output == [tmp]
    assert not made.failed
    local = host.to_local(tmp)
    assert local is not None
    assert local.is_dir()

    script, stdin = _bootstrap_powershell_script("powershell_expand_user.ps1", {"Path": "~\\x"})
    expanded = await execute(
        host, PipelineRequest([Command(text=script, is_script=True)], stdin.decode().splitlines())
    )
    assert expanded.output == [r"C:\Users\ansible\x"]

    from ansible._internal._powershell._script import parse_encoded_cmdline

    shell = shell_loader.get("powershell")
    parsed = parse_encoded_cmdline(shell.remove(tmp, recurse=True))
    assert parsed is not None
    removed = await execute(host, PipelineRequest([Command(text=parsed[0], is_script=True)]))
    assert not removed.failed
    assert not local.exists()

    parsed = parse_encoded_cmdline(shell.remove(r"C:\Windows\System32", recurse=True))
    assert parsed is not None
    refused = await execute(host, PipelineRequest([Command(text=parsed[0], is_script=True)]))
    assert refused.failed
    assert "Remove-Item" in refused.errors[0]


async def test_module_errors(captured: Captured, host: SimHost) -> None:
    crash = await execute(
        host,
        replay(edited(captured.request("win_ping"), "module_wrapper.ps1", args={"data": "crash"})),
    )
    body = module_json(crash)
    assert crash.exit_code == 1
    assert body["failed"] is True
    assert body["msg"] == "Unhandled exception while executing module: boom"

    status = captured.request("async_status", "status")
    host.async_dir_path.mkdir(parents=True)
    (host.async_dir_path / "j1.2").write_bytes(b"[1, 2]\r\n")
    result = await execute(host, replay(edited(status, "module_wrapper.ps1", args={"jid": "j1.2"})))
    assert result.exit_code == 1
    assert module_json(result)["msg"].startswith("Unhandled exception while executing module")

    no_jid = copy.deepcopy(status)
    manifest = json.loads(no_jid["input"][2])
    del manifest["actions"][0]["params"]["Variables"][0]["Value"]["jid"]
    no_jid["input"][2] = json.dumps(manifest)
    body = module_json(await execute(host, replay(no_jid)))
    assert body["msg"] == "Get-AnsibleParam: Missing required argument: jid"

    cleanup = captured.request("async_status", "cleanup")
    (host.async_dir_path / "j3.4").mkdir()
    refused = await execute(
        host, replay(edited(cleanup, "module_wrapper.ps1", args={"jid": "j3.4"}))
    )
    assert refused.failed
    assert (host.async_dir_path / "j3.4").is_dir()
