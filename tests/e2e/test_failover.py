"""Failover across nodes: ansible-rulebook with ``--persistence-id`` on a real PostgreSQL runs
the shipped rulebook against simulated Windows hosts; it is SIGKILLed before an event, between
an event and its playbook, and inside a playbook; each time another node (its own ``--id``, its
own empty working directory) takes over. Every job's follow-up runs once, or twice only when
the kill hit inside its playbook; every job file is removed. Measured in poll mode (watch mode
does not exist yet). ``make soak`` runs 20 failovers (``bench/soak_failover.py``)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.failover import KILL_MOMENTS, STEP_TIMEOUT_S, FailoverChain
from harness.sim_process import SimProcess
from tests.conftest import Database
from tests.paths import REPO
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

# What brings back an event the engine dropped (a node killed between the source's put and the
# engine's post, a post that failed while the database was away); production: 900 s or more,
# above the rulebook's 5-minute throttle.
REDELIVER_AFTER_S = 20.0


@pytest.fixture
def sim_hosts(tmp_path: Path) -> Iterator[SimProcess]:
    with SimProcess(tmp_path / "sim", hosts=2) as running:
        yield running


def test_failover_at_each_moment_loses_nothing_and_repeats_only_inside_the_window(
    tmp_path: Path, sim_hosts: SimProcess, postgres: Database
) -> None:
    chain = FailoverChain(tmp_path / "chain", sim_hosts, postgres.drools_vars(), random.Random(12))
    result = chain.run(len(KILL_MOMENTS), KILL_MOMENTS)

    assert result.lost == 0, f"lost: {result.lost_jids}"
    assert result.files_left == 0
    assert result.handled == result.jobs
    assert result.duplicated_outside_window == 0
    assert result.moments == dict.fromkeys(KILL_MOMENTS, 1)
    # every node after the first took over with nothing local of the one before
    assert all(not (n.workdir / "home" / ".ansible" / "winasync_eda").exists() for n in chain.nodes)


OUTAGE_S = 30.0


def test_postgres_away_for_30_s_while_jobs_finish_loses_nothing_and_leaks_no_secret(
    tmp_path: Path, sim_hosts: SimProcess, own_postgres: Database
) -> None:
    """ansible-rulebook 1.3.2 blocks on each persistence call for up to 30 s (HikariCP's
    connection timeout, fixed in drools) and ends the activation when the database stays away
    longer; EDA controller then restarts it. Whether node A lives through the outage or not,
    once the database is back (and, if A ended, a node B is started) nothing is lost: an event
    whose post failed in the engine comes back by ``redeliver_after``, once past the rule's
    throttle (which the engine applied before the post failed): the shipped rulebook with its
    5-minute throttle cut to 10 s, so the test need not wait 5 minutes."""
    shipped = (REPO / "rulebooks" / "windows_async_jobs.yml").read_text(encoding="utf-8")
    assert shipped.count("once_within: 5 minutes") == 2
    short_throttle = tmp_path / "windows_async_jobs_short_throttle.yml"
    short_throttle.write_text(
        shipped.replace("once_within: 5 minutes", "once_within: 10 seconds"), encoding="utf-8"
    )
    chain = FailoverChain(
        tmp_path / "chain",
        sim_hosts,
        own_postgres.drools_vars(),
        random.Random(5),
        rulebook=short_throttle,
        redeliver_after=REDELIVER_AFTER_S,
    )
    try:
        node = chain.start_node()
        chain.start_jobs(1)
        assert chain.settle(node), "the job before the outage was not handled"
        own_postgres.cluster.pause()
        down_at = time.monotonic()
        chain.start_jobs(3)
        wait_until(lambda: time.monotonic() - down_at >= OUTAGE_S, OUTAGE_S + 5, "the outage")
        own_postgres.cluster.resume()
        # the engine may still be inside a persistence call when the database comes back, and
        # end the activation just after: watch node A until its jobs are handled or it ends
        wait_until(
            lambda: (
                not node.running or (chain.recorded() >= set(chain.jobs) and not chain.files_left())
            ),
            STEP_TIMEOUT_S,
            "node A to handle the jobs or to end",
        )
        if not node.running:
            assert "PostgreSQL" in node.tail(60), "node A ended for another reason"
            node = chain.start_node()
        assert chain.settle(node), f"not settled after the outage:\n{node.tail()}"
    finally:
        chain.stop()
    result = chain.result(len(chain.nodes) - 1)
    assert (result.lost, result.duplicated_outside_window, result.files_left) == (0, 0, 0)
    assert result.handled == result.jobs == 4
    password = own_postgres.cluster.password
    for path in [*(n.log for n in chain.nodes), chain.record, chain.hooks]:
        assert password not in path.read_text(encoding="utf-8"), f"password in {path.name}"


@pytest.mark.parametrize("name", ["windows_async_jobs.yml", "windows_async_jobs_controller.yml"])
def test_both_shipped_rulebooks_hand_the_drools_db_variables_to_the_checkpoint(name: str) -> None:
    from ansible_rulebook.util import substitute_variables  # type: ignore[import-untyped]
    from winasync_eda.checkpoint_pg import db_target

    doc = yaml.safe_load((REPO / "rulebooks" / name).read_text(encoding="utf-8"))
    args = doc[0]["sources"][0]["winasync.eda.async_jobs"]
    drools = {
        "drools_db_host": "db.example",
        "drools_db_port": 5432,
        "drools_db_name": "eda",
        "drools_db_user": "eda",
        "drools_db_password": "pw-from-vars",
        "eda": {"filename": {"drools_sslrootcert": "/run/eda/ca.pem"}},
        "drools_sslmode": "verify-full",
    }
    target = db_target(substitute_variables(args["checkpoint_db"], drools), "checkpoint_db")
    assert target is not None
    params = {k: v for k, v in target.params if k != "password"}
    assert params == {
        "host": "db.example",
        "port": "5432",
        "dbname": "eda",
        "user": "eda",
        "sslmode": "verify-full",
        "sslrootcert": "/run/eda/ca.pem",
    }
    assert target.secrets == ["pw-from-vars"]
    # an activation without PostgreSQL persistence: the checkpoint stays off (or state_file)
    assert db_target(substitute_variables(args["checkpoint_db"], {}), "checkpoint_db") is None
