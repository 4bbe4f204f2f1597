"""Three real ansible-rulebook activations split 300 simulated hosts with ``shard: "i/n"``:
every outcome is handled exactly once across them, each by the activation that owns its host."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from winasync_eda.shard import owner

from harness.rulebook import Rulebook
from harness.sim_process import SimProcess
from tests.e2e.conftest import STEP_TIMEOUT_S, Sandbox

pytestmark = pytest.mark.e2e

HOSTS = 300
SHARDS = 3
HANDLED_RE = re.compile(r"HANDLED (\S+) (j\d+\.\d+) (\w+)")

# The variable that differs between the activations is winasync_shard, as in EDA controller.
RULEBOOK = """\
---
- name: One shard of the fleet
  hosts: all
  sources:
    - winasync.eda.async_jobs:
        inventory: "{{ winasync_inventory }}"
        shard: "{{ winasync_shard }}"
        interval: 3
        max_concurrency: 64
        host_events: false
  rules:
    - name: Note each outcome
      condition: event.async_job is defined
      action:
        debug:
          msg: "HANDLED {{ event.async_job.host }} {{ event.async_job.jid }} {{ event.async_job.status }}"
"""


def _handled(rb: Rulebook) -> list[tuple[str, str, str]]:
    # the rule's template (echoed at -v) does not match: only rendered messages count
    return [(m.group(1), m.group(2), m.group(3)) for m in HANDLED_RE.finditer(rb.text())]


def _cycles(rb: Rulebook) -> int:
    return rb.text().count("poll cycle (")


def test_three_shards_handle_every_outcome_exactly_once(sandbox: Sandbox, tmp_path: Path) -> None:
    rulebook = tmp_path / "shard.yml"
    rulebook.write_text(RULEBOOK, encoding="utf-8")
    with SimProcess(tmp_path / "sim", hosts=HOSTS, https=False) as fleet:
        activations = [
            sandbox.rulebook(
                fleet.inventory,
                {"winasync_shard": f"{i}/{SHARDS}"},
                rulebook=rulebook,
                name=f"shard{i}",
            ).start()
            for i in range(1, SHARDS + 1)
        ]
        for rb in activations:
            rb.wait_ready(STEP_TIMEOUT_S)
        # one job per host, outcomes mixed: 300 outcomes to hand out
        outcomes = ("finished", "failed", "timed_out")
        jobs = {
            fleet.job(host, outcomes[n % 3], duration_s=0.5): host
            for n, host in enumerate(fleet.names)
        }

        def all_seen() -> bool:
            return len({jid for rb in activations for _, jid, _ in _handled(rb)}) >= len(jobs)

        activations[0].wait_for(
            all_seen, STEP_TIMEOUT_S * 2, f"{len(jobs)} outcomes handled across the shards"
        )
        # one more round of polls on every shard: a repeat, if any were coming, shows by now
        marks = [_cycles(rb) for rb in activations]
        for rb, mark in zip(activations, marks, strict=True):
            rb.wait_for(lambda: _cycles(rb) > mark + 1, STEP_TIMEOUT_S, "two more poll cycles")  # noqa: B023
        for rb in activations:
            rb.stop()

    handled = {i: _handled(rb) for i, rb in enumerate(activations, start=1)}
    counts = Counter(jid for lines in handled.values() for _, jid, _ in lines)
    assert set(counts) == set(jobs)
    assert [jid for jid, n in counts.items() if n != 1] == []
    for index, lines in handled.items():
        # each outcome by the activation that owns its host, and its host is the job's
        assert all(owner(host, SHARDS) == index for host, _, _ in lines), index
        assert all(jobs[jid] == host for host, jid, _ in lines)
        # the source logs its share
        assert f"shard {index}/{SHARDS}: " in activations[index - 1].text()
    shares = [len(lines) for lines in handled.values()]
    assert sum(shares) == HOSTS and min(shares) > HOSTS / SHARDS / 2, shares
