"""The local backend against real async jobs started by a real ansible-playbook."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from winasync_eda.source import run

from tests.paths import PLUGIN
from tests.waiting import async_wait_until, wait_until


async def collect(args: dict[str, Any], count: int, timeout: float = 60) -> list[dict[str, Any]]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    events: list[dict[str, Any]] = []
    task = asyncio.create_task(run(queue, args))
    try:

        async def drain() -> None:
            while True:
                events.append(await queue.get())

        drainer = asyncio.create_task(drain())
        await async_wait_until(
            lambda: len(events) >= count or task.done(), timeout, f"{count} events"
        )
        drainer.cancel()
        if task.done():
            task.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return events


async def test_real_jobs_give_the_right_events(local_jobs: tuple[Path, dict[str, str]]) -> None:
    async_dir, jids = local_jobs
    events = await collect(
        {
            "hosts": [{"name": "localhost", "connection": "local", "async_dir": str(async_dir)}],
            "interval": 0.3,
        },
        3,
    )
    by_jid = {e["async_job"]["jid"]: e["async_job"] for e in events}
    assert by_jid[jids["ok"]]["status"] == "finished"
    assert by_jid[jids["ok"]]["rc"] == 0
    assert by_jid[jids["rc"]]["status"] == "failed"
    assert by_jid[jids["rc"]]["rc"] == 3
    assert by_jid[jids["timeout"]]["status"] == "timed_out"
    for job in by_jid.values():
        assert job["host"] == "localhost"
        assert job["results_file"] == str(async_dir / job["jid"])
        assert job["async_dir"] == str(async_dir)
    assert {e["meta"]["hosts"] for e in events} == {"localhost"}


def test_plugin_loads_with_runpy_like_ansible_rulebook() -> None:
    module = runpy.run_path(str(PLUGIN))
    assert asyncio.iscoroutinefunction(module["main"])
    assert "short_description" in module["DOCUMENTATION"]


def test_running_the_plugin_file_prints_events(local_jobs: tuple[Path, dict[str, str]]) -> None:
    async_dir, jids = local_jobs
    args = {
        "hosts": [{"name": "localhost", "connection": "local", "async_dir": str(async_dir)}],
        "interval": 0.3,
    }
    out = Path(async_dir.parent / "out.txt")
    with out.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(PLUGIN), json.dumps(args)],
            stdout=fh,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env={**os.environ, "PYTHONPATH": ""},
        )
    try:
        wait_until(
            lambda: all(j in out.read_text() for j in jids.values()), 60, "three printed events"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    text = out.read_text()
    assert '"status": "timed_out"' in text and '"status": "failed"' in text
