"""The jobs the demo starts, and what should become of each."""

from __future__ import annotations

from dataclasses import dataclass

FINISHED_PLAYBOOK = "job_finished"
FAILED_PLAYBOOK = "job_failed"


@dataclass(frozen=True)
class DemoJob:
    """One async job, started with playbooks/start_job.yml on ``host``."""

    name: str
    host: str
    command: str
    async_s: int
    expected: str  # the status the source should report
    reboot: bool = False  # reboot the host once the job runs: it is orphaned

    @property
    def playbook(self) -> str:
        return FINISHED_PLAYBOOK if self.expected == "finished" else FAILED_PLAYBOOK


JOBS: tuple[DemoJob, ...] = (
    DemoJob(
        "backup", "win01", "Start-Sleep -Seconds 3; Write-Output 'backup done'", 600, "finished"
    ),
    DemoJob(
        "patch", "win02", "Start-Sleep -Seconds 4; Write-Output 'disk full'; exit 3", 600, "failed"
    ),
    DemoJob("report", "win01", "Start-Sleep -Seconds 300", 6, "timed_out"),
    DemoJob("reindex", "win03", "Start-Sleep -Seconds 900", 3600, "lost", reboot=True),
)
HOSTS = sorted({job.host for job in JOBS})
