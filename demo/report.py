"""The demo's closing table: job, outcome, follow-up, cleaned; and whether all is as expected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from demo.scenario import FINISHED_PLAYBOOK, DemoJob


@dataclass
class JobState:
    """What was seen of one job."""

    job: DemoJob
    jid: str | None = None
    statuses: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    file_left: bool | None = None

    @property
    def outcome(self) -> str:
        return ", ".join(self.statuses) if self.statuses else "-"

    @property
    def follow_up(self) -> str:
        if not self.records:
            return "-"
        names = sorted({_playbook(r) for r in self.records})
        runs = len(self.records)
        return f"{', '.join(names)} ({runs} run{'s' if runs != 1 else ''})"

    @property
    def cleaned(self) -> str:
        if self.file_left is None:
            return "?"
        return "no" if self.file_left else "yes"

    @property
    def as_expected(self) -> bool:
        return (
            self.jid is not None
            and self.statuses == [self.job.expected]
            and len(self.records) == 1
            and _playbook(self.records[0]) == self.job.playbook
            and self.records[0].get("cleanup") == "erased"
            and self.file_left is False
        )

    def done(self) -> bool:
        """Its follow-up ran (whatever its result): nothing more to wait for."""
        return bool(self.records)


def _playbook(record: Mapping[str, Any]) -> str:
    return FINISHED_PLAYBOOK if record.get("outcome") == "finished" else "job_failed"


def table(states: Sequence[JobState]) -> str:
    header = ("job", "host", "jid", "outcome", "expected", "follow-up", "cleaned", "ok")
    rows = [header] + [
        (
            s.job.name,
            s.job.host,
            s.jid or "-",
            s.outcome,
            s.job.expected,
            s.follow_up,
            s.cleaned,
            "yes" if s.as_expected else "NO",
        )
        for s in states
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
