"""Failover across nodes: ansible-rulebook with ``--persistence-id`` on a real PostgreSQL runs
the shipped rulebook against simulated Windows hosts; it is SIGKILLed before an event, between
an event and its playbook, and inside a playbook; each time another node (its own ``--id``, its
own empty working directory) takes over. Every job's follow-up runs once, or twice only when
the kill hit inside its playbook; every job file is removed. Measured in poll mode (watch mode
does not exist yet). ``make soak`` runs 20 failovers (``bench/soak_failover.py``)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.failover import KILL_MOMENTS, FailoverChain
from harness.sim_process import SimProcess
from tests.conftest import Database

pytestmark = pytest.mark.e2e


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
