"""Compare what the source emitted with the jobs the sim ran: handled, lost, duplicated, latency."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.inprocess_hosts import JobRef
from bench.source_run import Arrival


@dataclass(frozen=True)
class Tally:
    jobs: int
    # jobs with an event of the expected status
    handled: int
    # jobs without one
    lost: int
    # events beyond the first for one (host, jid, status)
    duplicated: int
    # events for jobs the sim did not run, or with a status other than the expected one
    unexpected: int
    # arrival minus final write, per handled job (first arrival), seconds
    latencies: list[float] = field(default_factory=list)
    lost_jobs: list[JobRef] = field(default_factory=list)
    unexpected_events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def worst_latency_s(self) -> float | None:
        return max(self.latencies) if self.latencies else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def duplicates(arrivals: Iterable[Arrival]) -> int:
    counts = Counter((a.host, a.jid, a.status) for a in arrivals)
    return sum(n - 1 for n in counts.values() if n > 1)


def tally(
    refs: Sequence[JobRef],
    final_at: Mapping[JobRef, float | None],
    arrivals: Iterable[Arrival],
    hosts: set[str] | None = None,
) -> Tally:
    """``hosts``: only events of these hosts count (default: the hosts of ``refs``)."""
    scope = hosts if hosts is not None else {r.host for r in refs}
    seen = [a for a in arrivals if a.host in scope]
    first: dict[tuple[str, str, str], float] = {}
    for a in sorted(seen, key=lambda a: a.t):
        first.setdefault((a.host, a.jid, a.status), a.t)
    expected = {(r.host, r.jid, r.expected) for r in refs}
    latencies: list[float] = []
    lost: list[JobRef] = []
    for ref in refs:
        arrived = first.get((ref.host, ref.jid, ref.expected))
        if arrived is None:
            lost.append(ref)
            continue
        written = final_at.get(ref)
        if written is not None:
            latencies.append(max(0.0, arrived - written))
    unexpected = sorted(key for key in first if key not in expected)
    return Tally(
        jobs=len(refs),
        handled=len(refs) - len(lost),
        lost=len(lost),
        duplicated=duplicates(seen),
        unexpected=len(unexpected),
        latencies=latencies,
        lost_jobs=lost,
        unexpected_events=unexpected,
    )


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
