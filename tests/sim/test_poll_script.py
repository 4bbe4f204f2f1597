"""The poll script's meaning on the simulated host, against docs/poll-protocol.md."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Unpack

import pytest
from winasync_eda.transports import poll_wire

from tests.sim.conftest import FakeClock
from tests.sim.poll_params import ASYNC_DIR, PollArgs, poll_params
from tests.waiting import async_wait_until
from winsim import jobfiles
from winsim.api import Command, PipelineRequest, PipelineResult
from winsim.backlog import write_backlog
from winsim.host import OUT_OF_MEMORY, SimHost
from winsim.jobs import WriteControl
from winsim.scripts import poll as twin
from winsim.scripts.dispatch import execute
from winsim.scripts.poll import FUNCTION, MARKER, cut_utf16

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]
POLL_PS1 = REPO / "extensions/eda/winasync_eda/transports/poll.ps1"


@pytest.fixture
def host(tmp_path: Path, clock: FakeClock) -> SimHost:
    return SimHost("win01", tmp_path, clock=clock, boot_ms=1_795_800_000_000)


def poll_script() -> str:
    if POLL_PS1.exists():
        return POLL_PS1.read_text(encoding="utf-8-sig")
    return f"{MARKER}\nparam($AsyncDir, $Known, $Pids, $Only, $MaxBytes, $MaxAnswer)\n"


async def run_poll(
    host: SimHost, *, as_script: bool = False, **args: Unpack[PollArgs]
) -> PipelineResult:
    """The client's form by default: a call of the function the define script made."""
    params = poll_params(args)
    command = (
        Command(text=poll_script(), is_script=True, parameters=params)
        if as_script
        else Command(text=FUNCTION, is_script=False, parameters=params)
    )
    return await execute(host, PipelineRequest([command]))


async def poll(host: SimHost, **kwargs: Any) -> dict[str, Any]:
    result = await run_poll(host, **kwargs)
    assert not result.failed, result.errors
    assert result.errors == []
    assert len(result.output) == 1
    assert isinstance(result.output[0], str)
    answer: dict[str, Any] = json.loads(result.output[0])
    return answer


def by_name(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in answer["files"]}


def key(entry: dict[str, Any]) -> str:
    return f"{entry['size']}:{entry['mtime_ms']}"


def test_the_real_script_carries_the_marker() -> None:
    assert poll_script().splitlines()[0] == MARKER


def define_script() -> str:
    """What the client sends once per pool."""
    return poll_wire.DEFINE_SCRIPT


async def test_the_define_script_succeeds_with_no_output(host: SimHost) -> None:
    result = await execute(host, PipelineRequest([Command(text=define_script(), is_script=True)]))
    assert result == PipelineResult()


async def test_the_function_call_and_the_whole_script_give_the_same_answer(
    host: SimHost,
) -> None:
    jid = host.start_job("finished", 0)
    await host.job(jid).wait(20)
    as_call = await run_poll(host, pids=[1])
    as_script = await run_poll(host, pids=[1], as_script=True)
    assert not as_call.failed
    assert as_call == as_script
    assert [f["name"] for f in json.loads(as_call.output[0])["files"]] == [jid]
    # command names bind case-insensitively, as in PowerShell
    lower = Command(text=FUNCTION.lower(), is_script=False, parameters=[("AsyncDir", ASYNC_DIR)])
    result = await execute(host, PipelineRequest([lower]))
    assert result.failed  # recognised: fails on the missing Known, like the real function
    assert "script not simulated" not in result.errors[0]


async def test_missing_dir(host: SimHost) -> None:
    answer = await poll(host, known={"j1.2": "10:5"}, pids=[])
    assert answer["v"] == 1
    assert answer["exists"] is False
    assert answer["dir"] == r"C:\Users\ansible\.ansible_async"
    assert answer["files"] == []
    assert answer["gone"] == ["j1.2"]
    assert answer["now_ms"] == host.now_ms()
    assert answer["boot_ms"] == 1_795_800_000_000


async def test_lists_job_files_with_raw_bytes(host: SimHost, clock: FakeClock) -> None:
    old = host.start_job("finished", 0, generation="2.18")
    await host.job(old).wait(20)
    clock.now += 1
    new = host.start_job("finished", 3600, generation="2.19-ps51")
    adir = host.async_dir_path
    for other in ("notes.txt", "j1.2.tmp", "J5.6", "x12.3"):
        (adir / other).write_bytes(b"{}")
    (adir / "j7.8").mkdir()  # a directory is not a job file

    answer = await poll(host)
    assert answer["exists"] is True
    files = by_name(answer)
    assert set(files) == {old, new}
    for name, entry in files.items():
        raw = (adir / name).read_bytes()
        assert base64.b64decode(entry["content"]) == raw
        assert entry["size"] == len(raw)
        assert entry["summary"] is None
        assert entry["error"] is None
    assert base64.b64decode(files[old]["content"]).endswith(b"\r\n")
    assert files[new]["mtime_ms"] == host.now_ms()
    assert files[old]["ctime_ms"] == host.now_ms() - 1000
    assert answer["gone"] == []


async def test_known_unchanged_omitted_changed_resent_gone(host: SimHost, clock: FakeClock) -> None:
    a = host.start_job("finished", 3600)
    b = host.start_job("finished", 3600)
    c = host.start_job("finished", 3600)
    first = by_name(await poll(host))
    known = {name: key(entry) for name, entry in first.items()}

    assert (await poll(host, known=known))["files"] == []

    clock.now += 2
    host.end_job_now(b)
    await host.job(b).wait(20)
    (host.async_dir_path / c).unlink()
    answer = await poll(host, known=known)
    assert [f["name"] for f in answer["files"]] == [b]
    assert (
        jobfiles.decode_job_file(base64.b64decode(answer["files"][0]["content"]))
        == host.job(b).final
    )
    assert answer["gone"] == [c]
    assert a not in answer["gone"]

    # a stale key (same name, other size) is sent again
    stale = dict(known, **{a: "1:1"})
    names = [f["name"] for f in (await poll(host, known=stale))["files"]]
    assert names == sorted([a, b])  # NTFS lists names in order


async def test_only(host: SimHost) -> None:
    a = host.start_job("finished", 3600)
    b = host.start_job("finished", 3600)
    answer = await poll(host, only=[b], known={a: "1:1", "j9.9": "1:1"})
    assert [f["name"] for f in answer["files"]] == [b]
    # a is filtered out but still present, so not gone
    assert answer["gone"] == ["j9.9"]


async def test_procs(host: SimHost) -> None:
    alive = host.spawn_process()
    hidden = host.spawn_process()
    host.hidden_start_pids.add(hidden)
    answer = await poll(host, pids=[alive, hidden, 999_999])
    assert answer["procs"] == {str(alive): host.now_ms(), str(hidden): -1, "999999": None}


async def test_procs_after_reboot_and_pid_reuse(host: SimHost, clock: FakeClock) -> None:
    jid = host.start_job("finished", 3600)
    pid = host.job(jid).watchdog_pid
    assert (await poll(host, pids=[pid]))["procs"][str(pid)] == host.now_ms()
    clock.now += 300
    host.reboot()
    answer = await poll(host, pids=[pid])
    assert answer["procs"][str(pid)] is None
    assert answer["boot_ms"] == host.now_ms()
    entry = by_name(answer)[jid]
    assert entry["mtime_ms"] < answer["boot_ms"]
    assert json.loads(base64.b64decode(entry["content"]))["finished"] is False
    while host.spawn_process() != pid:
        pass
    assert (await poll(host, pids=[pid]))["procs"][str(pid)] == host.now_ms()


async def test_summary_for_big_files(host: SimHost) -> None:
    jid = host.start_job("failed", 0, rc=3, stdout="é" * 5000, stderr="e" * 5000)
    await host.job(jid).wait(20)
    size = (host.async_dir_path / jid).stat().st_size
    answer = await poll(host, max_bytes=size - 1)
    entry = by_name(answer)[jid]
    assert entry["content"] is None
    assert entry["error"] is None
    summary = entry["summary"]
    assert summary == {
        "started": True,
        "finished": True,
        "failed": True,
        "rc": 3,
        "changed": True,
        "ansible_async_watchdog_pid": host.job(jid).watchdog_pid,
        "msg": "non-zero return code",
    }
    # exactly MaxBytes is still sent whole
    assert by_name(await poll(host, max_bytes=size))[jid]["content"] is not None


async def test_a_huge_file_is_never_read_whole_and_its_outcome_still_decided(
    host: SimHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old behaviour: the whole file was read (and parsed) to summarise it."""
    jid = host.start_job("failed", 0, rc=3, stdout="x" * (3 * 1024 * 1024))
    await host.job(jid).wait(20)
    size = (host.async_dir_path / jid).stat().st_size
    reads: list[int] = []
    real_read = twin._read

    def counting_read(path: Path, size: int, max_length: int) -> tuple[bytes, bytes]:
        head, tail = real_read(path, size, max_length)
        reads.append(len(head) + len(tail))
        return head, tail

    monkeypatch.setattr(twin, "_read", counting_read)
    entry = by_name(await poll(host, max_bytes=1024 * 1024))[jid]
    assert reads == [twin.HEAD_BYTES + twin.TAIL_BYTES] and size > 20 * reads[0]
    assert entry["summary"]["finished"] is True
    assert entry["summary"]["failed"] is True
    assert entry["summary"]["rc"] == 3


async def test_summary_null_for_a_half_written_big_file(host: SimHost) -> None:
    jid = host.start_job("finished", 0, stdout="x" * 500, write=WriteControl(hold=True))
    job = host.job(jid)
    host.step_write(jid)
    await async_wait_until(lambda: job.phase == "writing-partial", 20, "phase writing-partial")
    answer = await poll(host, max_bytes=10)
    entry = by_name(answer)[jid]
    assert entry["summary"] is None
    assert entry["content"] is None
    assert entry["error"] is None
    host.step_write(jid)
    await job.wait(20)


async def test_empty_and_partial_files_are_sent_as_is(host: SimHost) -> None:
    jid = host.start_job("finished", 0, write=WriteControl(hold=True))
    job = host.job(jid)
    await async_wait_until(lambda: job.phase == "writing-empty", 20, "phase writing-empty")
    entry = by_name(await poll(host))[jid]
    assert entry["size"] == 0
    assert entry["content"] == ""
    host.step_write(jid)
    await async_wait_until(lambda: job.phase == "writing-partial", 20, "phase writing-partial")
    entry = by_name(await poll(host))[jid]
    assert entry["size"] > 0
    assert jobfiles.decode_job_file(base64.b64decode(entry["content"])) is None
    host.step_write(jid)
    await job.wait(20)


async def test_sharing_violation(host: SimHost) -> None:
    jid = host.start_job("finished", 0, write=WriteControl(hold=True), lock_while_writing=True)
    other = host.start_job("finished", 3600)
    job = host.job(jid)
    await async_wait_until(lambda: job.phase == "writing-empty", 20, "phase writing-empty")
    files = by_name(await poll(host))
    assert files[jid]["content"] is None
    assert files[jid]["summary"] is None
    assert "being used by another process" in files[jid]["error"]
    assert files[other]["error"] is None
    assert files[other]["content"]
    host.step_write(jid)
    host.step_write(jid)
    await job.wait(20)
    assert by_name(await poll(host))[jid]["error"] is None

    host.lock_file(rf"{host.async_dir}\{other}")
    assert "being used" in by_name(await poll(host))[other]["error"]
    host.lock_file(rf"{host.async_dir}\{other}", locked=False)
    assert by_name(await poll(host))[other]["error"] is None


async def test_other_async_dir(host: SimHost) -> None:
    jid = host.start_job("finished", 3600, async_dir=r"C:\jobs")
    answer = await poll(host, async_dir=r"C:\JOBS")
    assert answer["dir"] == r"C:\JOBS"
    assert [f["name"] for f in answer["files"]] == [jid]
    assert (await poll(host, async_dir=r"D:\nowhere"))["exists"] is False


async def test_only_a_missing_directory_is_no_directory(host: SimHost) -> None:
    """Old behaviour: `[IO.Directory]::Exists` is false on access denied, an unexpanded %VAR%,
    a relative path: each read as "no directory", and every known job became `gone`."""
    host.start_job("finished", 3600)
    known = {"j1.2": "10:5"}
    cases = {
        r"%NOPE%\x": twin.DIR_UNEXPANDED.format(dir=r"%NOPE%\x"),
        r"jobs\here": twin.DIR_NOT_ROOTED.format(dir=r"jobs\here"),
        r"C:jobs": twin.DIR_NOT_ROOTED.format(dir=r"C:jobs"),
    }
    for async_dir, message in cases.items():
        result = await run_poll(host, async_dir=async_dir, known=known)
        assert result.failed and result.errors == [message], async_dir
    host.deny_access(host.async_dir)
    result = await run_poll(host, known=known)
    assert result.failed
    assert result.errors == [twin.DIR_DENIED.format(dir=host.async_dir)]
    host.deny_access(host.async_dir, denied=False)
    assert (await poll(host, known=known))["gone"] == ["j1.2"]
    (host.profile_dir / "afile").write_bytes(b"")
    result = await run_poll(host, async_dir=r"%USERPROFILE%\afile")
    assert result.failed and "cannot be listed" in result.errors[0]
    # UNC paths are absolute; on the simulated host they are not found
    assert (await poll(host, async_dir=r"\\server\share\jobs"))["exists"] is False


async def test_bad_parameters_fail_the_pipeline(host: SimHost) -> None:
    request = PipelineRequest(
        [Command(text=poll_script(), is_script=True, parameters=[("AsyncDir", ASYNC_DIR)])]
    )
    result = await execute(host, request)
    assert result.failed
    assert result.errors
    assert result.output == []
    bad = await run_poll(host, max_bytes=0, known=None)
    assert not bad.failed
    result = await execute(
        host,
        PipelineRequest(
            [
                Command(
                    text=poll_script(),
                    is_script=True,
                    parameters=[
                        ("AsyncDir", ASYNC_DIR),
                        ("Known", "{}"),
                        ("Pids", "[1]"),
                        ("Only", "[]"),
                        ("MaxBytes", "lots"),
                    ],
                )
            ]
        ),
    )
    assert result.failed


async def test_marker_only_on_the_first_line(host: SimHost) -> None:
    text = "# something else\n" + poll_script()
    result = await execute(host, PipelineRequest([Command(text=text, is_script=True)]))
    assert result.failed
    assert result.errors == ["winsim: script not simulated: # something else"]


async def test_unrecognised_scripts_fail(host: SimHost) -> None:
    result = await execute(
        host,
        PipelineRequest([Command(text="Get-Process | Select-Object -First 1", is_script=True)]),
    )
    assert result.failed
    assert result.errors == ["winsim: script not simulated: Get-Process | Select-Object -First 1"]
    result = await execute(host, PipelineRequest([Command(text="Get-ChildItem", is_script=False)]))
    assert result.failed
    assert "Get-ChildItem" in result.errors[0]
    # the function's name as a script is not a call of it
    result = await execute(host, PipelineRequest([Command(text=FUNCTION, is_script=True)]))
    assert result.failed
    assert result.errors == [f"winsim: script not simulated: {FUNCTION}"]
    result = await execute(host, PipelineRequest([]))
    assert result.failed


def test_cut_counts_utf16_units() -> None:
    assert cut_utf16("abc", 5) == "abc"
    assert cut_utf16("abcdef", 3) == "abc"
    # U+1F600 is two UTF-16 units: never cut in half
    assert cut_utf16("a\U0001f600b", 2) == "a"
    assert cut_utf16("a\U0001f600b", 3) == "a\U0001f600"


async def test_a_byte_budget_defers_the_rest_to_the_next_polls(host: SimHost) -> None:
    """Old behaviour: every new file of the directory came back in one answer."""
    names = write_backlog(host, 30, 4000)
    cost = (4000 + 2) // 3 * 4 + twin.ENTRY_COST
    first = await poll(host, max_answer=10 * cost)
    assert [f["name"] for f in first["files"]] == names[:10]
    assert first["deferred"] == names[10:]
    assert len(first["gone"]) == 0
    # the next poll names what it has read: it gets the next ten, and nothing is gone
    known = {f["name"]: key(f) for f in first["files"]}
    second = await poll(host, known=known, max_answer=10 * cost)
    assert [f["name"] for f in second["files"]] == names[10:20]
    assert second["deferred"] == names[20:]
    # a budget smaller than one file still reads one file per poll: never stuck
    tiny = await poll(host, max_answer=1)
    assert [f["name"] for f in tiny["files"]] == names[:1]
    assert tiny["deferred"] == names[1:]


async def test_a_poll_past_the_memory_quota_fails_as_winrm_fails_it(host: SimHost) -> None:
    """MaxMemoryPerShellMB: the poll's modelled working set passes the quota: the pipeline
    fails with the OutOfMemoryException that the job object's limit causes."""
    host.memory_quota_mb = 96
    write_backlog(host, 200, 40_000)  # 8 MB read: 40 MB of runspace + 10 x 8 MB > 96 MB
    result = await run_poll(host, max_answer=64 * 1024 * 1024)
    assert result.failed
    assert result.errors == [OUT_OF_MEMORY]
    assert host.quota_failures == 1
    # within the default budget the same host answers
    answer = await poll(host)
    assert len(answer["files"]) + len(answer["deferred"]) == 200
    assert host.quota_failures == 1
    assert host.peak_working_set > 96 * 1024 * 1024


async def test_the_final_write_fails_while_a_poll_holds_the_file(host: SimHost) -> None:
    host.read_hold_s = 60.0
    old = host.start_job("finished", 3600, generation="2.18")
    new = host.start_job("finished", 3600, generation="2.19-pwsh7")
    before = (host.async_dir_path / old).read_bytes()
    await poll(host)  # reads both files: their handles stay open
    for jid in (old, new):
        host.end_job_now(jid)
        await host.job(jid).wait(5)
    assert host.job(old).phase == "write-failed"
    assert (host.async_dir_path / old).read_bytes() == before  # still "running"
    assert host.process_start_ms(host.job(old).watchdog_pid) is None
    temp = host.to_local(host.expand(r"%TEMP%"))
    assert temp is not None
    assert (temp / f"ansible-async-watchdog-error-{old}.txt").exists()
    # pwsh 7's writer is not modelled as failing
    assert host.job(new).phase == "done"


async def test_a_pid_past_int32_never_breaks_the_poll(host: SimHost) -> None:
    """Old behaviour: `[int]$value` threw for 2147483648 and every poll of the host failed."""
    answer = await poll(host, pids=[2**31, 2**32 + 4, host.session_pid])
    assert answer["procs"][str(2**31)] is None
    assert answer["procs"][str(2**32 + 4)] is None
    assert answer["procs"][str(host.session_pid)] is not None
