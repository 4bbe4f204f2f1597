"""The checkpoint in a real PostgreSQL (a throwaway cluster, tests/conftest.py): the file's
delivery guarantees, one table per id, transactions that a SIGKILL cannot tear, an outage that
loses nothing, one clear line when the database is away at start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from winasync_eda.checkpoint import Checkpoint
from winasync_eda.checkpoint_pg import CheckpointDbError, PostgresStore, db_target

from harness.postgres import free_port
from tests.conftest import Database
from tests.paths import REPO
from tests.unit.fakes import FakeHost, Watching, finished
from tests.waiting import async_wait_until, wait_until


def store(db: Database, ident: str = "p1", **kw: Any) -> PostgresStore:
    target = db_target(db.params(), "checkpoint_db")
    assert target is not None
    return PostgresStore(target, ident, **kw)


def rows(db: Database, table: str = "winasync_checkpoint_p1") -> list[tuple[Any, ...]]:
    with psycopg.connect(db.conninfo()) as conn:
        return conn.execute(f'SELECT host, jid, status FROM "{table}" ORDER BY 1, 2, 3').fetchall()


async def test_restart_on_another_node_emits_neither_less_nor_more(postgres: Database) -> None:
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    async with Watching([a], store=store(postgres)) as h1:
        await async_wait_until(lambda: len(h1.jobs()) == 1, 5, "first event")
    a.write("j2.2", finished("j2.2", failed=True, rc=1))  # finishes while the source is down
    # another node: nothing local, only the database
    async with Watching([a], store=store(postgres)) as h2:
        await async_wait_until(lambda: len(h2.jobs()) == 1, 5, "the job that ended while down")
        polls = a.polls
        await async_wait_until(lambda: a.polls >= polls + 4, 5, "more polls")
    assert h2.jobs() == [("win01", "j2.2", "failed")]
    assert rows(postgres) == [("win01", "j1.1", "finished"), ("win01", "j2.2", "failed")]


async def test_redelivery_times_survive_the_move(postgres: Database) -> None:
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    async with Watching([a], store=store(postgres), redeliver_after=0.3) as h1:
        await async_wait_until(lambda: len(h1.jobs()) == 1, 5, "first event")
    async with Watching([a], store=store(postgres), redeliver_after=0.3) as h2:
        await async_wait_until(lambda: len(h2.events) >= 1, 5, "the redelivery")
    assert h2.events[0]["async_job"]["redelivered"] is True


async def test_a_job_whose_file_is_gone_is_deleted_and_ids_have_their_own_tables(
    postgres: Database,
) -> None:
    a = FakeHost("win01")
    a.write("j1.1", finished("j1.1"))
    a.write("j2.2", finished("j2.2"))
    async with Watching([a], store=store(postgres, "p1")) as h:
        await async_wait_until(lambda: len(h.jobs()) == 2, 5, "two events")
        a.remove("j1.1")
        await async_wait_until(
            lambda: rows(postgres) == [("win01", "j2.2", "finished")], 5, "j1.1 deleted"
        )
    async with Watching([a], store=store(postgres, "p2")) as other:
        await async_wait_until(lambda: len(other.jobs()) == 1, 5, "another id starts empty")
    assert rows(postgres, "winasync_checkpoint_p2") == [("win01", "j2.2", "finished")]


async def test_open_shells_are_kept_in_a_table_of_their_own(postgres: Database) -> None:
    first = Checkpoint(None, store(postgres))
    await first.load()
    first.set_shells("win01", {"A", "B"})
    first.set_shells("win02", {"C"})
    await first.flush()
    first.set_shells("win02", set())  # deleted cleanly
    first.set_shells("win01", {"B", "D"})
    await first.flush()
    await first.close()
    # another node: the shells come from the database
    again = Checkpoint(None, store(postgres))
    await again.load()
    await again.close()
    assert again.shells() == {"win01": frozenset({"B", "D"})}
    assert again.delivered_at("win01", "j1.1", "finished") is None
    with psycopg.connect(postgres.conninfo()) as conn:
        got = conn.execute('SELECT host, shell_id FROM "winasync_shells_p1" ORDER BY 1, 2')
        assert got.fetchall() == [("win01", "B"), ("win01", "D")]


async def test_unreachable_at_start_is_one_line_without_the_password(postgres: Database) -> None:
    params = {**postgres.params(), "port": free_port()}
    target = db_target(params, "checkpoint_db")
    assert target is not None
    with pytest.raises(CheckpointDbError) as info:
        await Checkpoint(None, PostgresStore(target, "p1")).load()
    text = str(info.value)
    assert text.startswith(f"checkpoint_db: cannot use PostgreSQL at 127.0.0.1:{params['port']}/")
    assert "\n" not in text and postgres.cluster.password not in text


async def test_a_wrong_password_is_one_line_without_it(postgres: Database) -> None:
    target = db_target({**postgres.params(), "password": "wrong-Secret-9"}, "checkpoint_db")
    assert target is not None
    with pytest.raises(CheckpointDbError, match="password authentication failed") as info:
        await Checkpoint(None, PostgresStore(target, "p1")).load()
    assert "wrong-Secret-9" not in str(info.value)


async def test_an_outage_waits_retries_and_loses_nothing(
    own_postgres: Database, caplog: pytest.LogCaptureFixture
) -> None:
    a = FakeHost("win01")
    async with Watching([a], store=store(own_postgres, retry_max_s=0.5)) as h:
        own_postgres.cluster.pause()
        a.write("j1.1", finished("j1.1"))
        a.write("j2.2", finished("j2.2"))
        await async_wait_until(
            lambda: "checkpoint database" in caplog.text and "unreachable" in caplog.text,
            15,
            "a retry logged",
        )
        own_postgres.cluster.resume()
        await async_wait_until(lambda: len(h.jobs()) == 2, 30, "both events after the outage")
        await async_wait_until(lambda: len(rows(own_postgres)) == 2, 15, "both rows written")
    assert own_postgres.cluster.password not in caplog.text
    assert sorted(h.jobs()) == [("win01", "j1.1", "finished"), ("win01", "j2.2", "finished")]


# A child that saves batch after batch (delete the last one, insert the next) and says which
# batch committed; SIGKILLed at a random moment, the table holds one whole batch.
_WRITER = """
import asyncio, json, sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from winasync_eda.checkpoint import Changes
from winasync_eda.checkpoint_pg import PostgresStore, db_target
async def main():
    store = PostgresStore(db_target(json.loads(sys.argv[1]), "checkpoint_db"), "crash")
    await store.load()
    batch = 0
    while True:
        batch += 1
        ch = Changes(removed={("h", f"b{batch - 1}.{i}") for i in range(50)})
        ch.upserts = {("h", f"b{batch}.{i}", "finished"): batch for i in range(50)}
        await store.save(ch)
        print(batch, flush=True)
asyncio.run(main())
"""


@pytest.mark.parametrize("kill_after_batches", [3, 17, 40])
def test_sigkill_in_the_middle_of_writes_leaves_one_whole_batch(
    postgres: Database, kill_after_batches: int
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WRITER,
            json.dumps(postgres.params()),
            str(REPO / "extensions" / "eda"),
            str(REPO),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout

    def committed_enough() -> bool:
        return int(out.readline() or 0) >= kill_after_batches

    wait_until(committed_enough, 60, "batches written")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    with psycopg.connect(postgres.conninfo()) as conn:
        found = conn.execute(
            "SELECT count(*), min(delivered_at), max(delivered_at) FROM winasync_checkpoint_crash"
        ).fetchone()
    assert found is not None
    count, low, high = found
    assert (count, low) == (50, high), "a write was torn"
    assert high >= kill_after_batches


async def test_the_source_stops_in_bounded_time_while_the_database_is_away(
    own_postgres: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from winasync_eda import source

    monkeypatch.setattr(source, "CLOSE_TIMEOUT_S", 1.0)
    async_dir = tmp_path / "async"
    async_dir.mkdir()
    (async_dir / "j1.1").write_bytes(finished("j1.1"))
    queue: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.create_task(
        source.run(
            queue,
            {
                "hosts": [{"name": "me", "connection": "local", "async_dir": str(async_dir)}],
                "interval": 0.05,
                "checkpoint_db": own_postgres.conninfo(),
                "checkpoint_id": "stop",
            },
        )
    )
    await async_wait_until(lambda: queue.qsize() == 1, 15, "the first event")
    # the event is emitted before its flush ends; pausing before the flush commits would hold
    # the first outcome in memory, and the source emits nothing new until it is written
    await async_wait_until(
        lambda: rows(own_postgres, "winasync_checkpoint_stop") == [("me", "j1.1", "finished")],
        15,
        "the first outcome recorded",
    )
    own_postgres.cluster.pause()
    (async_dir / "j2.2").write_bytes(finished("j2.2"))
    await async_wait_until(lambda: queue.qsize() == 2, 15, "the second event, not yet recorded")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 20)
    own_postgres.cluster.resume()
    # the first outcome was recorded, the second not: it is emitted again at the next start
    assert rows(own_postgres, "winasync_checkpoint_stop") == [("me", "j1.1", "finished")]
