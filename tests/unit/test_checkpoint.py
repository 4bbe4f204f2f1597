"""Checkpoint: restarts neither lose nor repeat an outcome; stale and corrupt state files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from winasync_eda.checkpoint import Checkpoint, CheckpointError

from tests.unit.fakes import FakeHost, Watching, finished
from tests.waiting import async_wait_until


def host_with_one_finished_job() -> FakeHost:
    """A host ``win01`` whose async dir holds the file of one finished job, ``j1.1``."""
    host = FakeHost("win01")
    host.write("j1.1", finished("j1.1"))
    return host


async def test_restart_with_state_file_emits_neither_less_nor_more(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    a = host_with_one_finished_job()
    async with Watching([a], state=state) as h1:
        await async_wait_until(lambda: len(h1.jobs()) == 1, 5, "first event")
    a.write("j2.2", finished("j2.2", failed=True, rc=1))  # finishes while the source is down
    async with Watching([a], state=state) as h2:
        await async_wait_until(lambda: len(h2.jobs()) == 1, 5, "the job that ended while down")
        polls = a.polls
        await async_wait_until(lambda: a.polls >= polls + 4, 5, "more polls")
    assert h2.jobs() == [("win01", "j2.2", "failed")]
    saved = json.loads(state.read_text())
    assert set(saved["delivered"]["win01"]) == {"j1.1", "j2.2"}


async def test_checkpoint_forgets_jobs_whose_file_is_gone(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    a = host_with_one_finished_job()
    async with Watching([a], state=state) as h:
        await async_wait_until(lambda: len(h.jobs()) == 1, 5, "event")
        # the event leaves before its flush: the state file may not exist yet
        await async_wait_until(lambda: "j1.1" in _delivered(state), 5, "recorded")
        a.remove("j1.1")
        await async_wait_until(lambda: "j1.1" not in _delivered(state), 5, "pruned")


def _delivered(state: Path, host: str = "win01") -> dict[str, object]:
    """The jobs of one host in the state file; none while it is not written yet."""
    if not state.exists():
        return {}
    delivered: dict[str, object] = json.loads(state.read_text())["delivered"].get(host, {})
    return delivered


async def test_stale_temp_file_of_a_killed_write_is_removed(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text('{"version": 1, "delivered": {"win01": {"j1.1": {"finished": 5}}}}')
    stale = tmp_path / ".s.json.4242.tmp"
    stale.write_text('{"version": 1, "deliv')
    checkpoint = Checkpoint(state)
    await checkpoint.load()
    assert not stale.exists()
    assert checkpoint.delivered_at("win01", "j1.1", "finished") == 5


async def test_corrupt_state_file_is_one_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text("{not json")
    with pytest.raises(CheckpointError, match="state_file"):
        await Checkpoint(state).load()


async def test_a_state_file_from_before_shells_were_kept_loads(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text('{"version": 1, "delivered": {"win01": {"j1.1": {"finished": 5}}}}')
    checkpoint = Checkpoint(state)
    await checkpoint.load()
    assert checkpoint.shells() == {}
    assert checkpoint.delivered_at("win01", "j1.1", "finished") == 5
    # written again, it gains the key and keeps what was there
    checkpoint.set_shells("win01", {"A"})
    await checkpoint.flush()
    saved = json.loads(state.read_text())
    assert saved["shells"] == {"win01": ["A"]}
    assert saved["delivered"] == {"win01": {"j1.1": {"finished": 5}}}


async def test_open_shells_are_written_at_once_and_read_back(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    checkpoint = Checkpoint(state)
    await checkpoint.load()
    checkpoint.set_shells("win01", {"A", "B"})
    checkpoint.set_shells("win02", {"C"})
    checkpoint.set_shells("win03", {"D"})
    checkpoint.set_shells("win03", set())  # deleted cleanly: forgotten
    # no event, no explicit flush: a pool just opened must reach the disk before a kill
    await async_wait_until(lambda: _shells(state) == {"win01": ["A", "B"], "win02": ["C"]}, 5, "")
    again = Checkpoint(state)
    await again.load()
    assert again.shells() == {"win01": frozenset({"A", "B"}), "win02": frozenset({"C"})}
    await checkpoint.close()


async def test_a_failed_write_of_the_shells_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "dir" / "s.json"
    checkpoint = Checkpoint(state)
    await checkpoint.load()
    (tmp_path / "dir").write_text("a file where the directory should be")
    checkpoint.set_shells("win01", {"A"})
    await async_wait_until(lambda: "recording the open shells failed" in caplog.text, 5, "")
    (tmp_path / "dir").unlink()
    await checkpoint.flush()
    assert _shells(state) == {"win01": ["A"]}


@pytest.mark.parametrize(
    "shells", ['{"win01": "A"}', '["A"]', '{"win01": [1]}'], ids=["string", "list", "number"]
)
async def test_a_state_file_with_bad_shells_is_one_clear_error(tmp_path: Path, shells: str) -> None:
    state = tmp_path / "s.json"
    state.write_text(f'{{"version": 1, "delivered": {{}}, "shells": {shells}}}')
    with pytest.raises(CheckpointError, match="unexpected layout"):
        await Checkpoint(state).load()


def _shells(state: Path) -> dict[str, list[str]]:
    if not state.exists():
        return {}
    shells: dict[str, list[str]] = json.loads(state.read_text())["shells"]
    return shells
