"""The simulated host's state, and job files byte for byte per ansible-core generation."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import REPO
from tests.sim.conftest import FakeClock
from tests.waiting import async_wait_until
from winsim import jobfiles
from winsim.host import SimHost, expand_environment_variables
from winsim.jobs import JOB_NAME_RE, WriteControl

pytestmark = pytest.mark.sim


@pytest.fixture
def host(tmp_path: Path, clock: FakeClock) -> SimHost:
    return SimHost("win01", tmp_path, clock=clock)


# -- environment and paths --


def test_expand_like_dotnet() -> None:
    env = {"USERPROFILE": r"C:\Users\ansible", "TEMP": r"C:\t"}
    assert expand_environment_variables(r"%USERPROFILE%\.ansible_async", env) == (
        r"C:\Users\ansible\.ansible_async"
    )
    assert expand_environment_variables(r"%userprofile%\x", env) == r"C:\Users\ansible\x"
    assert expand_environment_variables(r"%NOPE%\x", env) == r"%NOPE%\x"
    assert expand_environment_variables("100% sure", env) == "100% sure"
    assert expand_environment_variables("%%TEMP%", env) == r"%C:\t"
    assert expand_environment_variables("", env) == ""


def test_host_paths_are_case_insensitive(host: SimHost) -> None:
    assert host.async_dir == r"C:\Users\ansible\.ansible_async"
    assert host.async_dir_path == host.root / "Users" / "ansible" / ".ansible_async"
    host.async_dir_path.mkdir()
    (host.async_dir_path / "j1.2").write_bytes(b"{}")
    assert host.to_local(r"c:\USERS\Ansible\.ANSIBLE_ASYNC\J1.2") == host.async_dir_path / "j1.2"
    assert host.to_local("C:/Users/ansible/.ansible_async") == host.async_dir_path
    assert host.to_local(r"D:\jobs") is None
    assert host.to_local(r"\\server\share\x") is None
    assert host.to_local(r"relative\x") is None
    assert host.to_local(r"C:\..\..\etc") == host.root / "etc"
    assert host.to_windows(host.async_dir_path / "j1.2") == r"C:\Users\ansible\.ansible_async\j1.2"


def test_processes_and_pid_reuse_after_reboot(host: SimHost, clock: FakeClock) -> None:
    first = host.spawn_process()
    assert host.process_start_ms(first) == host.now_ms()
    host.hidden_start_pids.add(first)
    assert host.process_start_ms(first) == -1
    host.kill_process(first)
    assert host.process_start_ms(first) is None

    before = host.spawn_process()
    clock.now += 60
    host.reboot()
    assert host.boot_ms == host.now_ms()
    assert host.process_start_ms(before) is None
    # the sequence restarts: the same pids come back, with a later start
    assert [host.spawn_process(), host.spawn_process()] == [first, before]
    start = host.process_start_ms(before)
    assert start is not None
    assert start >= host.boot_ms
    heard: list[int] = []
    host.reboot_listeners.append(lambda: heard.append(host.boot_ms))
    host.reboot()
    assert heard == [host.boot_ms]
    explicit = host.spawn_process(pid=1234, start_ms=5)
    assert host.process_start_ms(explicit) == 5


# -- job files per generation --

JID = "j123456789012.4000"
RESULTS = r"C:\Users\ansible\.ansible_async\j123456789012.4000"
RESULTS_JSON = RESULTS.replace("\\", "\\\\")
INITIAL_218 = (
    '{"started":1,"finished":0,"results_file":"'
    + RESULTS_JSON
    + '","ansible_job_id":"'
    + JID
    + '","_ansible_suppress_tmpdir_delete":true,"ansible_async_watchdog_pid":4004}'
)
INITIAL_219 = INITIAL_218.replace('"started":1,"finished":0', '"started":true,"finished":false')


def test_initial_bytes_per_generation() -> None:
    rec = {g: jobfiles.initial_record(JID, RESULTS, 4004, g) for g in jobfiles.GENERATIONS}
    assert jobfiles.encode_initial(rec["2.18"], "2.18") == INITIAL_218.encode() + b"\r\n"
    # [File]::WriteAllText with UTF8Encoding($false): no BOM, no newline
    assert jobfiles.encode_initial(rec["2.19-ps51"], "2.19-ps51") == INITIAL_219.encode()
    assert jobfiles.encode_initial(rec["2.19-pwsh7"], "2.19-pwsh7") == INITIAL_219.encode()


@pytest.mark.parametrize(
    ("generation", "prefix", "encoding"),
    [
        ("2.18", b"", "cp1252"),
        ("2.19-ps51", b"\xef\xbb\xbf", "utf-8"),
        ("2.19-pwsh7", b"", "utf-8"),
    ],
)
def test_final_bytes_per_generation(
    generation: jobfiles.Generation, prefix: bytes, encoding: str
) -> None:
    initial = jobfiles.initial_record(JID, RESULTS, 4004, generation)
    record = jobfiles.final_record(initial, {"rc": 0, "stdout": "café\r\n"}, generation)
    data = jobfiles.encode_final(record, generation)
    assert data.startswith(prefix)
    assert data.endswith(b"}\r\n")
    assert not data.endswith(b"\r\n\r\n")
    body = data[len(prefix) :].decode(encoding)
    parsed = json.loads(body)
    assert parsed["stdout"] == "café\r\n"
    legacy = generation == "2.18"
    assert parsed["finished"] == (1 if legacy else True)
    assert parsed["started"] == (1 if legacy else True)
    assert type(parsed["finished"]) is (int if legacy else bool)
    assert jobfiles.decode_job_file(data) == parsed


def test_ansi_and_unicode_text() -> None:
    record = {"stdout": "é€✓"}
    # Set-Content on 5.1: the ANSI code page, an unmappable character becomes '?'
    assert jobfiles.encode_final(record, "2.18") == b'{"stdout":"\xe9\x80?"}\r\n'
    assert jobfiles.encode_final(record, "2.19-pwsh7") == '{"stdout":"é€✓"}\r\n'.encode()
    # ConvertTo-Json on 5.1 escapes HTML characters; pwsh 7 does not
    assert jobfiles.convert_to_json({"m": "<a href='x'>&"}, edition="5.1") == (
        '{"m":"\\u003ca href=\\u0027x\\u0027\\u003e\\u0026"}'
    )
    assert jobfiles.convert_to_json({"m": "<'&>"}, edition="7") == '{"m":"<\'&>"}'


def test_timeout_records_per_generation() -> None:
    old = jobfiles.timeout_record(jobfiles.initial_record(JID, RESULTS, 1, "2.18"), "2.18")
    assert old["msg"] == "timed out waiting for module completion"
    assert old["failed"] is True
    assert old["finished"] == 1
    assert "exception" not in old
    new = jobfiles.timeout_record(
        jobfiles.initial_record(JID, RESULTS, 1, "2.19-ps51"), "2.19-ps51"
    )
    assert new["msg"] == "failure during async watchdog: timed out waiting for module completion"
    assert new["failed"] is True
    assert new["finished"] is True
    assert new["exception"].startswith("timed out waiting for module completion\r\n")
    assert new["stdout"] is None
    assert new["stderr"] == ""


# -- scripted jobs --


async def test_finished_job_lifecycle(host: SimHost, clock: FakeClock) -> None:
    jid = host.start_job("finished", 3600, stdout="hello\r\n", generation="2.19-ps51")
    assert JOB_NAME_RE.match(jid)
    assert jid.endswith(f".{host.session_pid}")
    job = host.job(jid)
    path = host.async_dir_path / jid
    data = path.read_bytes()
    assert data == job.initial_bytes
    assert not data.startswith(b"\xef\xbb\xbf")
    initial = json.loads(data)
    assert initial["started"] is True
    assert initial["finished"] is False
    assert initial["results_file"] == rf"C:\Users\ansible\.ansible_async\{jid}"
    pid = initial["ansible_async_watchdog_pid"]
    assert host.process_start_ms(pid) == host.now_ms()
    assert path.stat().st_mtime_ns // 1_000_000 == host.now_ms()

    clock.now += 5
    host.end_job_now(jid)
    await job.wait(20)
    assert job.phase == "done"
    final = path.read_bytes()
    assert final.startswith(b"\xef\xbb\xbf")
    assert final.endswith(b"\r\n")
    record = jobfiles.decode_job_file(final)
    assert record is not None
    assert record["finished"] is True
    assert record["rc"] == 0
    assert "failed" not in record
    assert record["stdout"] == "hello\r\n"
    assert record["changed"] is True
    assert record["delta"] == "0:00:05.000000"
    assert host.process_start_ms(pid) is None
    assert path.stat().st_mtime_ns // 1_000_000 == host.now_ms()


@pytest.mark.parametrize("generation", jobfiles.GENERATIONS)
async def test_failed_job(host: SimHost, generation: jobfiles.Generation) -> None:
    jid = host.start_job("failed", 0, rc=2, stderr="boom", generation=generation)
    job = host.job(jid)
    await job.wait(20)
    data = job.path.read_bytes()
    assert data == jobfiles.encode_final(job.final or {}, generation)
    record = jobfiles.decode_job_file(data)
    assert record is not None
    assert record["failed"] is True
    assert record["rc"] == 2
    assert record["msg"] == "non-zero return code"
    assert record["stderr"] == "boom"
    assert record["finished"] == (1 if generation == "2.18" else True)


@pytest.mark.parametrize(
    ("generation", "msg"),
    [
        ("2.18", "timed out waiting for module completion"),
        ("2.19-pwsh7", "failure during async watchdog: timed out waiting for module completion"),
    ],
)
async def test_timed_out_job(host: SimHost, generation: jobfiles.Generation, msg: str) -> None:
    # a job that would run an hour, with an async limit of 0 s
    jid = host.start_job("finished", 3600, timeout_s=0, generation=generation)
    job = host.job(jid)
    await job.wait(20)
    record = jobfiles.decode_job_file(job.path.read_bytes())
    assert record is not None
    assert record["msg"] == msg
    assert record["failed"] is True


async def test_orphaned_job_keeps_unfinished_file(host: SimHost) -> None:
    jid = host.start_job("orphaned", 0)
    job = host.job(jid)
    await job.wait(20)
    assert job.phase == "orphaned"
    assert job.path.read_bytes() == job.initial_bytes
    assert host.process_start_ms(job.watchdog_pid) is None


async def test_orphan_on_request(host: SimHost) -> None:
    jid = host.start_job("finished", 3600)
    host.orphan_job(jid)
    job = host.job(jid)
    assert job.phase == "orphaned"
    assert job.ended.is_set()
    await asyncio.sleep(0)
    assert job.path.read_bytes() == job.initial_bytes


async def test_reboot_orphans_running_jobs(host: SimHost, clock: FakeClock) -> None:
    done = host.start_job("finished", 0)
    await host.job(done).wait(20)
    running = host.start_job("finished", 3600, generation="2.18")
    job = host.job(running)
    old_boot = host.boot_ms
    clock.now += 120
    host.reboot()
    assert host.boot_ms > old_boot
    assert job.phase == "killed"
    await asyncio.sleep(0.01)
    assert job.path.read_bytes() == job.initial_bytes  # never finished
    assert host.job(done).phase == "done"
    assert host.processes == {host.session_pid: host.now_ms()}
    # the dead watchdog's pid comes back for a new process, started after the file was written
    assert job.watchdog_pid in (host.spawn_process(), host.spawn_process())
    assert (host.process_start_ms(job.watchdog_pid) or 0) > job.started_ms


async def test_partial_write_windows(host: SimHost) -> None:
    jid = host.start_job("finished", 0, stdout="x" * 200, write=WriteControl(hold=True))
    job = host.job(jid)
    await async_wait_until(lambda: job.phase == "writing-empty", 20, "phase writing-empty")
    assert job.path.read_bytes() == b""
    host.step_write(jid)
    await async_wait_until(lambda: job.phase == "writing-partial", 20, "phase writing-partial")
    partial = job.path.read_bytes()
    assert jobfiles.decode_job_file(partial) is None
    host.step_write(jid)
    await job.wait(20)
    final = job.path.read_bytes()
    assert 0 < len(partial) < len(final)
    assert final.startswith(partial)


async def test_large_output(host: SimHost) -> None:
    big = "line of output\r\n" * 200_000  # 3.2 MB
    jid = host.start_job("finished", 0, stdout=big, generation="2.19-pwsh7")
    job = host.job(jid)
    await job.wait(30)
    assert job.path.stat().st_size > 3_000_000
    record = jobfiles.decode_job_file(job.path.read_bytes())
    assert record is not None
    assert record["stdout"] == big


async def test_jid_choice(host: SimHost) -> None:
    assert host.start_job("finished", 0, jid="j42") == f"j42.{host.session_pid}"
    assert host.start_job("finished", 0, jid="j43.77") == "j43.77"
    with pytest.raises(ValueError, match="not a job id"):
        host.start_job("finished", 0, jid="43")
    with pytest.raises(ValueError, match="outcome"):
        host.start_job("exploded", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rc 0"):
        host.start_job("finished", 0, rc=3)
    custom = host.start_job("finished", 0, async_dir=r"%TEMP%\jobs")
    assert (host.profile_dir / "AppData" / "Local" / "Temp" / "jobs" / custom).is_file()
    with pytest.raises(ValueError, match="C: drive"):
        host.start_job("finished", 0, async_dir=r"D:\jobs")


# -- from another thread --


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_start_job_and_reboot_from_another_thread(
    tmp_path: Path, loop_thread: asyncio.AbstractEventLoop
) -> None:
    host = SimHost("win02", tmp_path)
    with pytest.raises(RuntimeError, match="no event loop"):
        host.start_job("finished", 0)
    host.attach_loop(loop_thread)
    jid = host.start_job("failed", 0, rc=5)
    job = host.wait_until_finished(jid, timeout=20)
    assert job.phase == "done"
    assert job.final is not None
    assert job.final["rc"] == 5

    slow = host.start_job("finished", 3600)
    with pytest.raises(TimeoutError):
        host.wait_until_finished(slow, timeout=0.05)
    host.reboot()
    assert host.wait_until_finished(slow, timeout=20).phase == "killed"
    assert re.fullmatch(r"j\d{1,12}\.\d+", slow)


# -- the command line --


def test_command_line_serve_job_reboot(tmp_path: Path) -> None:
    state = tmp_path / "s"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    cli = [sys.executable, "-m", "winsim"]
    serve = subprocess.Popen(
        [*cli, "serve", "--hosts", "2", "--state", str(state), "--stop-after", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert serve.stdout is not None
        lines = [serve.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("win01 http://127.0.0.1:")
        assert lines[1].startswith("win02 http://127.0.0.1:")
        assert lines[2].startswith("control ")
        creds = state / ".winsim" / "credentials" / "win01.json"
        assert f"credentials={creds}" in lines[0]
        password = json.loads(creds.read_text())["password"]
        assert password not in "".join(lines)
        assert creds.stat().st_mode & 0o077 == 0

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*cli, *args],
                capture_output=True,
                text=True,
                env=env,
                cwd=REPO,
                timeout=60,
                check=False,
            )

        started = run("job", "--state", str(state), "--host", "win01", "--outcome", "failed")
        assert started.returncode == 0, started.stderr
        jid = started.stdout.strip()
        assert JOB_NAME_RE.match(jid)
        path = state / "win01" / "Users" / "ansible" / ".ansible_async" / jid
        assert path.is_file()
        slow = run("job", "--state", str(state), "--host", "win02", "--duration", "3600").stdout
        rebooted = run("reboot", "--state", str(state), "--host", "win02")
        assert rebooted.returncode == 0, rebooted.stderr
        slow_path = state / "win02" / "Users" / "ansible" / ".ansible_async" / slow.strip()
        assert json.loads(slow_path.read_bytes())["finished"] is False
        refused = run("job", "--state", str(state), "--host", "win09")
        assert refused.returncode == 1
        assert "win09" in refused.stderr
        listed = run("hosts", "--state", str(state))
        assert listed.stdout.count("credentials=") == 2
    finally:
        serve.terminate()
        serve.wait(30)
    assert not (state / ".winsim" / "control.sock").exists()
