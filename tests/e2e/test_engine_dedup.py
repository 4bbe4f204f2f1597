"""Does ansible-rulebook's own de-duplication by ``meta.uuid`` make the source's checkpoint
unnecessary after a failover? No. ansible-rulebook 1.3.2 (drools-jpy 0.4.1, "HA deduplication
buffer size set to 5") recovers the session from PostgreSQL on the new node, yet fires again for
every re-emitted outcome, the same ``meta.uuid`` included: its window of recent ids does not
carry across a failover here (and would hold only the last 5 anyway). A new node whose source
has no checkpoint therefore repeats every outcome whose job file is still there; with
``checkpoint_db`` nothing is emitted again at all.

Seven finished job files stay on disk (the rule only prints, it does not clean up); node A
handles them and is SIGKILLed; node B (another ``--id``, its own working directory) starts.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.rulebook import Rulebook, checkout_collections, sandbox_env
from tests.conftest import Database

pytestmark = pytest.mark.e2e

JOBS = [f"j10000000{i:02d}.1" for i in range(7)]
FIRED = re.compile(r"FIRED (j\d+\.\d+)")


def _rulebook(path: Path, async_dir: Path) -> Path:
    source = {
        "hosts": [{"name": "localhost", "connection": "local", "async_dir": str(async_dir)}],
        "interval": 0.5,
        "checkpoint_db": "{{ test_checkpoint_db | default(none) }}",
    }
    doc = [
        {
            "name": "Engine de-duplication",
            "hosts": "all",
            "sources": [{"name": "async_jobs", "winasync.eda.async_jobs": source}],
            "rules": [
                {
                    "name": "Fire once per outcome",
                    "condition": 'event.async_job.status == "finished"',
                    "action": {"debug": {"msg": "FIRED {{ event.async_job.jid }}"}},
                }
            ],
        }
    ]
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _node(root: Path, name: str, rulebook: Path, variables: dict[str, Any]) -> Rulebook:
    inventory = root / "inventory.ini"
    inventory.write_text(f"localhost ansible_python_interpreter={sys.executable}\n")
    workdir = root / name
    return Rulebook(
        rulebook,
        inventory,
        workdir,
        sandbox_env(workdir / "home"),
        variables=variables,
        collections=[checkout_collections(root / "collections")],
        persistence_id="77",
        node_id=name,
        name=name,
    )


def _fired_after_failover(root: Path, db: Database, extra: dict[str, Any]) -> list[str]:
    async_dir = root / "async"
    async_dir.mkdir(parents=True)
    for jid in JOBS:
        (async_dir / jid).write_text(
            json.dumps({"started": 1, "finished": 1, "ansible_job_id": jid, "rc": 0}),
            encoding="utf-8",
        )
    rulebook = _rulebook(root / "dedup.yml", async_dir)
    variables = {**db.drools_vars(), **extra}
    a = _node(root, "nodeA", rulebook, variables).start()
    try:
        a.wait_for(lambda: len(set(FIRED.findall(a.text()))) == len(JOBS), 180, "A fires 7")
        a.wait_for(lambda: "poll cycle (" in a.text(), 60, "a poll cycle")
    finally:
        a.kill()
    assert sorted(FIRED.findall(a.text())) == JOBS
    b = _node(root, "nodeB", rulebook, variables).start()
    try:
        b.wait_ready(180)
        # two full poll cycles after start: whatever B's source emits has been taken in
        b.wait_for(lambda: b.text().count("poll cycle (") >= 2, 60, "two poll cycles")
    finally:
        b.stop()
    return sorted(FIRED.findall(b.text()))


def test_without_the_checkpoint_the_engine_fires_again_for_every_outcome(
    tmp_path: Path, postgres: Database
) -> None:
    # not even the last 5 ids node A took in are dropped
    assert _fired_after_failover(tmp_path, postgres, {}) == JOBS


def test_with_checkpoint_db_nothing_fires_again(tmp_path: Path, postgres: Database) -> None:
    fired = _fired_after_failover(tmp_path, postgres, {"test_checkpoint_db": postgres.conninfo()})
    assert fired == []
