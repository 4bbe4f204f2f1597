"""LocalTransport on a temporary directory: the same answers the PSRP poll script gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from winasync_eda.transports.base import FileKey, PollRequest, TransportError
from winasync_eda.transports.local import LocalTransport


def write(directory: Path, name: str, data: bytes) -> FileKey:
    path = directory / name
    path.write_bytes(data)
    st = path.stat()
    return FileKey(st.st_size, st.st_mtime_ns // 1_000_000)


async def test_a_missing_dir_is_reported_and_every_known_file_is_gone(tmp_path: Path) -> None:
    request = PollRequest(str(tmp_path / "none"), known={"j1.2": FileKey(1, 2)})
    snap = await LocalTransport("me").poll(request)
    assert (snap.exists, snap.results_dir, list(snap.gone)) == (
        False,
        str(tmp_path / "none"),
        ["j1.2"],
    )


async def test_new_files_are_read_whole_and_other_names_ignored(tmp_path: Path) -> None:
    write(tmp_path, "j1.2", b'{"started": 1}')
    write(tmp_path, "notes.txt", b"x")
    write(tmp_path, "j1", b"x")
    snap = await LocalTransport("me").poll(PollRequest(str(tmp_path)))
    assert snap.exists and snap.now_ms > 0
    assert [(e.name, e.content) for e in snap.changed] == [("j1.2", b'{"started": 1}')]
    assert snap.changed[0].size == 14


async def test_unchanged_files_are_not_read_again_and_removed_ones_are_gone(tmp_path: Path) -> None:
    same = write(tmp_path, "j1.2", b"{}")
    changed = write(tmp_path, "j3.4", b"{}")
    request = PollRequest(
        str(tmp_path),
        known={"j1.2": same, "j3.4": FileKey(changed.size + 1, changed.mtime_ms), "j5.6": same},
    )
    snap = await LocalTransport("me").poll(request)
    assert [e.name for e in snap.changed] == ["j3.4"]
    assert list(snap.gone) == ["j5.6"]


async def test_only_limits_the_files(tmp_path: Path) -> None:
    write(tmp_path, "j1.2", b"{}")
    write(tmp_path, "j3.4", b"{}")
    snap = await LocalTransport("me").poll(PollRequest(str(tmp_path), only=["j3.4"]))
    assert [e.name for e in snap.changed] == ["j3.4"]


async def test_home_and_variables_are_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WINASYNC_TEST_DIR", "jobs")
    (tmp_path / "jobs").mkdir()
    snap = await LocalTransport("me").poll(PollRequest("~/$WINASYNC_TEST_DIR"))
    assert snap.exists and snap.results_dir == str(tmp_path / "jobs")


@pytest.fixture
def ended_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc")
async def test_processes_running_and_gone(tmp_path: Path, ended_pid: int) -> None:
    request = PollRequest(str(tmp_path), pids=[os.getpid(), ended_pid])
    snap = await LocalTransport("me").poll(request)
    assert snap.boot_ms is not None and 0 < snap.boot_ms <= snap.now_ms
    own_start = snap.procs[os.getpid()]
    assert own_start is not None and snap.boot_ms <= own_start <= snap.now_ms
    assert snap.procs[ended_pid] is None


async def test_a_dir_that_cannot_be_listed_is_a_transport_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(TransportError, match="me: cannot list"):
        await LocalTransport("me").poll(PollRequest(str(not_a_dir)))


async def test_close_releases_nothing_and_may_be_repeated() -> None:
    transport = LocalTransport("me")
    await transport.close()
    await transport.close()
