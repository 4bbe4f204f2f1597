"""Names shared by every module: job statuses and what a job file name looks like."""

from __future__ import annotations

import re
from enum import StrEnum

# `<jid>.<pid>` in every ansible-core version; the whole name is the ansible_job_id.
JOB_NAME_RE = re.compile(r"^j[0-9]{1,12}\.[0-9]+$")


def is_job_name(name: str) -> bool:
    """True for a name ansible's async wrapper could have written (others are ignored)."""
    return JOB_NAME_RE.fullmatch(name) is not None


class Status(StrEnum):
    """A job's status as the contract names it (``docs/contract.md``: add one there first)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    VANISHED = "vanished"


DEFAULT_EMIT = frozenset({Status.FINISHED, Status.FAILED, Status.TIMED_OUT, Status.LOST})
