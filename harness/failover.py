"""Failover across nodes with the real ansible-rulebook on a shared PostgreSQL.

A chain of nodes: each runs the shipped rulebook with ``--persistence-id`` (the same for all),
``--id`` of its own, its own empty working directory and HOME, the engine's ``drools_db_*``
variables (which also give the source its ``checkpoint_db``), against simulated Windows hosts.
Jobs are started on the hosts, the node is SIGKILLed (with its playbooks) at a chosen moment,
and the next node takes over. Used by ``tests/e2e/test_failover.py`` and ``bench/soak_failover.py``.

Kill moments:

- ``before_event``: jobs just started, none of them reported yet;
- ``after_event``: the source has emitted an outcome whose follow-up has not begun;
- ``in_playbook``: a follow-up's tasks have begun, its cleanup has not removed the file.

The follow-up tasks append one line per run to a hooks file (jid, node); the playbooks append
one record per run to the record file. Counted: a job is *handled* when its record is there and
its file is gone, *lost* otherwise; *duplicated* when its follow-up tasks began more than once;
*inside the window* when the first run began on a node that was killed before that run's record
(the crash hit while that playbook ran), the one case where a second run is documented.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.process import wait_until
from harness.rulebook import (
    READY_LINE,
    Rulebook,
    RulebookError,
    checkout_collections,
    sandbox_env,
)
from harness.sim_process import SimProcess

log = logging.getLogger(__name__)

KILL_MOMENTS = ("before_event", "after_event", "in_playbook")
PERSISTENCE_ID = "4242"
STEP_TIMEOUT_S = 240.0
# the hook: one JSON line per follow-up run, written on the controller
_HOOK = "lookup('ansible.builtin.env', 'FAILOVER_HOOKS')"
HOOK_TASKS = [
    {
        "name": "Note that the follow-up began",
        "ansible.builtin.shell": (
            "printf '%s\\n' {{ {'jid': winasync_job.jid, 'host': winasync_job.host,"
            " 'node': lookup('ansible.builtin.env', 'FAILOVER_NODE'),"
            " 'redelivered': winasync_job.redelivered} | to_json | quote }}"
            " >> {{ " + _HOOK + " | quote }}"
        ),
        "delegate_to": "localhost",
        "changed_when": True,
    },
]


def json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line half-written when the node died
            continue
    return out


@dataclass
class Kill:
    node: str
    moment: str
    reached: bool
    at: float
    recorded: frozenset[str]
    takeover_s: float = 0.0


@dataclass
class FailoverResult:
    runs: int
    jobs: int
    handled: int
    lost: int
    duplicated: int
    duplicated_outside_window: int
    moments: dict[str, int]
    moments_reached: dict[str, int]
    takeover_s: list[float]
    playbook_window_s: list[float]
    files_left: int
    lost_jids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def spread(values: list[float]) -> dict[str, float]:
            if not values:
                return {}
            ordered = sorted(values)
            return {
                "p50": round(ordered[len(ordered) // 2], 1),
                "max": round(ordered[-1], 1),
            }

        return {
            "runs": self.runs,
            "jobs": self.jobs,
            "handled": self.handled,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "duplicated_outside_window": self.duplicated_outside_window,
            "moments": self.moments,
            "moments_reached": self.moments_reached,
            "takeover_s": spread(self.takeover_s),
            "window_s": spread(self.playbook_window_s),
            "files_left": self.files_left,
        }


@dataclass
class FailoverChain:
    """Nodes one after another on one database; ``run()`` does the kills and counts."""

    root: Path
    sim: SimProcess
    drools_vars: Mapping[str, Any]
    rng: random.Random
    interval: float = 0.5
    rulebook: str | Path = "winasync.eda.windows_async_jobs"
    redeliver_after: float | None = None
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    nodes: list[Rulebook] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # jid -> host
    kills: list[Kill] = field(default_factory=list)
    _started_at: dict[str, float] = field(default_factory=dict)
    _recorded_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.record = self.root / "records.jsonl"
        self.hooks = self.root / "hooks.jsonl"
        self.hook_tasks = self.root / "hook_tasks.yml"
        self.hook_tasks.write_text(yaml.safe_dump(HOOK_TASKS, sort_keys=False), encoding="utf-8")
        self.collections = checkout_collections(self.root / "collections")

    # --- observing ------------------------------------------------------------------------

    def starts(self) -> list[dict[str, Any]]:
        return json_lines(self.hooks)

    def recorded(self) -> set[str]:
        return {str(r.get("jid")) for r in json_lines(self.record)}

    def files_left(self) -> list[str]:
        return [f for host in self.sim.names for f in self.sim.job_files(host)]

    def observe(self) -> None:
        """Note when each follow-up began and when its record appeared (the window)."""
        now = time.monotonic()
        for start in self.starts():
            self._started_at.setdefault(str(start["jid"]), now)
        for jid in self.recorded():
            self._recorded_at.setdefault(jid, now)

    def _wait(self, predicate: Any, timeout: float) -> bool:
        def check() -> bool:
            self.observe()
            return bool(predicate())

        return wait_until(check, timeout, step=0.05)

    # --- nodes ----------------------------------------------------------------------------

    def start_node(self) -> Rulebook:
        name = f"node{len(self.nodes)}"
        workdir = self.root / name
        env = sandbox_env(
            workdir / "home", {"FAILOVER_HOOKS": str(self.hooks), "FAILOVER_NODE": name}
        )
        variables: dict[str, Any] = {
            "winasync_inventory": str(self.sim.inventory),
            "winasync_interval": self.interval,
            "winasync_record_file": str(self.record),
            "winasync_followup_tasks": str(self.hook_tasks),
            "winasync_remediation_tasks": str(self.hook_tasks),
            **self.drools_vars,
            **self.extra_vars,
        }
        if self.redeliver_after is not None:
            variables["winasync_redeliver_after"] = self.redeliver_after
        node = Rulebook(
            self.rulebook,
            self.sim.inventory,
            workdir,
            env,
            variables=variables,
            collections=[self.collections],
            persistence_id=PERSISTENCE_ID,
            node_id=name,
            name=name,
        )
        self.nodes.append(node)
        node.start()
        # observed meanwhile: the playbooks of a run in flight go on
        ready = self._wait(lambda: READY_LINE in node.text() or not node.running, STEP_TIMEOUT_S)
        if not (ready and node.running):
            raise RulebookError(f"{name} did not start; last lines:\n{node.tail()}")
        return node

    def start_jobs(self, count: int) -> list[str]:
        started = []
        for _ in range(count):
            host = self.rng.choice(self.sim.names)
            outcome = self.rng.choice(["finished", "finished", "failed"])
            options = {"rc": 2} if outcome == "failed" else {}
            jid = self.sim.job(host, outcome, round(self.rng.uniform(0.3, 2.5), 2), **options)
            self.jobs[jid] = host
            started.append(jid)
        return started

    def kill_at(self, node: Rulebook, moment: str, jids: Sequence[str]) -> Kill:
        """Wait for ``moment`` of one of ``jids`` (or give up after a while), then SIGKILL."""
        if moment == "before_event":
            reached = not any(f": {jid} " in node.text() for jid in jids)
        elif moment == "after_event":
            reached = self._wait(
                lambda: any(
                    f": {jid} " in node.text() and jid not in self._started_at for jid in jids
                ),
                60,
            )
        else:
            reached = self._wait(
                lambda: any(jid in self._started_at and jid not in self.recorded() for jid in jids),
                60,
            )
        node.kill()
        kill = Kill(node.name, moment, reached, time.monotonic(), frozenset(self.recorded()))
        self.kills.append(kill)
        return kill

    # --- the run --------------------------------------------------------------------------

    def run(self, failovers: int, moments: Sequence[str] | None = None) -> FailoverResult:
        """``failovers`` kills (moments in turn, or at random), then the last node settles."""
        node = self.start_node()
        try:
            for i in range(failovers):
                moment = moments[i % len(moments)] if moments else self.rng.choice(KILL_MOMENTS)
                jids = self.start_jobs(self.rng.randint(1, 3))
                kill = self.kill_at(node, moment, jids)
                log.info("killed %s at %s (reached: %s)", kill.node, moment, kill.reached)
                node = self.start_node()
                kill.takeover_s = time.monotonic() - kill.at
            self.start_jobs(2)
            self.settle(node)
        finally:
            self.stop()
        return self.result(failovers)

    def settle(self, node: Rulebook) -> bool:
        """Wait until every job is recorded and its file gone, then one more poll cycle with
        no playbook running (a repeat, if one were coming, would have begun by then)."""
        settled = self._wait(
            lambda: self.recorded() >= set(self.jobs) and not self.files_left(), STEP_TIMEOUT_S
        )
        if not settled:
            log.warning("not settled: %s", node.tail())
            return False
        cycles = node.text().count("poll cycle (")
        return self._wait(
            lambda: node.text().count("poll cycle (") > cycles and not node.playbooks_running(),
            STEP_TIMEOUT_S,
        )

    def stop(self) -> None:
        for each in self.nodes:
            each.stop()

    def result(self, runs: int) -> FailoverResult:
        self.observe()
        starts = self.starts()
        per_jid = Counter(str(s["jid"]) for s in starts)
        first_node: dict[str, str] = {}
        for s in starts:
            first_node.setdefault(str(s["jid"]), str(s["node"]))
        recorded = self.recorded()
        left = self.files_left()
        lost = sorted(j for j in self.jobs if j not in recorded or j in left)
        killed = {k.node: k for k in self.kills}
        duplicated = [j for j, n in per_jid.items() if n > 1]
        outside = [
            j
            for j in duplicated
            if per_jid[j] > 2 or first_node[j] not in killed or j in killed[first_node[j]].recorded
        ]
        windows = [
            self._recorded_at[j] - self._started_at[j]
            for j in self.jobs
            if j in self._recorded_at and j in self._started_at and per_jid[j] == 1
        ]
        return FailoverResult(
            runs=runs,
            jobs=len(self.jobs),
            handled=len(self.jobs) - len(lost),
            lost=len(lost),
            duplicated=len(duplicated),
            duplicated_outside_window=len(outside),
            moments=dict(Counter(k.moment for k in self.kills)),
            moments_reached=dict(Counter(k.moment for k in self.kills if k.reached)),
            takeover_s=[k.takeover_s for k in self.kills],
            playbook_window_s=windows,
            files_left=len(left),
            lost_jids=lost,
        )


__all__ = ["KILL_MOMENTS", "FailoverChain", "FailoverResult", "RulebookError"]
