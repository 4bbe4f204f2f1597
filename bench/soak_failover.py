"""The failover soak: ansible-rulebook nodes one after another on one PostgreSQL
(``--persistence-id``), each SIGKILLed at a random moment (before an event, between an event
and its playbook, inside a playbook) while jobs finish on simulated Windows hosts; the next
node, with its own ``--id`` and an empty working directory, takes over. Measured in poll mode
(watch mode does not exist yet).

``duplicated_outside_window`` counts follow-ups that ran twice other than after a kill inside
their playbook (before its cleanup removed the job file), the one documented window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import progress
from harness.failover import FailoverChain
from harness.postgres import PostgresCluster
from harness.sim_process import SimProcess


@dataclass(frozen=True)
class FailoverConfig:
    runs: int = 20
    hosts: int = 3
    interval: float = 0.5
    # brings back an event the engine dropped when a node died between the source's put and
    # the engine's post (production: 900 s, above the rulebook's 5-minute throttle)
    redeliver_after: float = 30.0
    seed: int = 7


def failover_soak(workdir: Path, cfg: FailoverConfig) -> dict[str, Any]:
    progress(f"failover soak: {cfg.runs} failovers, {cfg.hosts} hosts")
    with (
        PostgresCluster() as pg,
        SimProcess(workdir / "sim", hosts=cfg.hosts) as sim,
    ):
        chain = FailoverChain(
            workdir / "chain",
            sim,
            pg.drools_vars(),
            random.Random(cfg.seed),
            interval=cfg.interval,
            redeliver_after=cfg.redeliver_after,
        )
        result = chain.run(cfg.runs)
    summary = result.summary()
    progress(
        f"failover soak: {summary['jobs']} jobs, {summary['handled']} handled, "
        f"{summary['lost']} lost, {summary['duplicated']} duplicated "
        f"({summary['duplicated_outside_window']} outside the window)"
    )
    return summary
