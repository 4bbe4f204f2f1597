"""The Windows path: simulated Windows hosts (WinRM on loopback: Basic over https, and Negotiate
over http with message encryption, what most fleets run), jobs started with
playbooks/start_job.yml over ansible's psrp connection, the source polling over pypsrp, the
follow-up playbooks cleaning the job files on the simulated disks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.sim_process import SimProcess
from tests.e2e.conftest import (
    Sandbox,
    sim_job_files,
    start_windows_jobs,
    wait_settled,
)
from tests.secret_scan import assert_not_shown
from winsim.kdc import available as kdc_available

pytestmark = pytest.mark.e2e


@pytest.fixture(
    params=[("basic", True), ("negotiate", False), ("kerberos", False)],
    ids=["basic-https", "negotiate-http-encrypted", "kerberos-http-encrypted"],
)
def sim_hosts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SimProcess]:
    auth, https = request.param
    if auth == "kerberos" and (missing := kdc_available()):
        pytest.skip(f"Kerberos needs the KDC: {missing}")
    with SimProcess(tmp_path / "sim", hosts=3, https=https, auth=auth) as running:
        yield running


def test_windows_jobs_are_followed_up_remediated_and_cleaned(
    sandbox: Sandbox, sim_hosts: SimProcess
) -> None:
    # Kerberos: where the KDC is, for ansible-rulebook, the source and the playbooks
    sandbox.env.update(sim_hosts.client_env)
    rb = sandbox.rulebook(
        sim_hosts.inventory, {"winasync_remediation_tasks": str(sandbox.hook_tasks)}
    ).start()

    ok, failed, timed_out, orphan = start_windows_jobs(
        sandbox,
        sim_hosts,
        [
            ("win01", "Start-Sleep -Seconds 1; Write-Output 'backup done'", 60),
            ("win02", "Start-Sleep -Seconds 1; Write-Output 'disk full'; exit 3", 60),
            ("win01", "Start-Sleep -Seconds 120", 2),
            ("win03", "Start-Sleep -Seconds 600", 3600),
        ],
    )
    # the orphan's watchdog dies with the host: its file says "running" for good
    assert orphan in sim_hosts.job_files("win03")
    sim_hosts.reboot("win03")

    wait_settled(rb, sandbox, 4, lambda: sim_job_files(sim_hosts))
    rb.stop()

    records = sandbox.records()
    assert len(records) == 4, f"a follow-up ran more than once: {records}"
    by_jid = {r["jid"]: r for r in records}
    expected = {
        ok: ("win01", "finished", "finished", 0),
        failed: ("win02", "failed", "failed", 3),
        timed_out: ("win01", "timed_out", "failed", None),
        orphan: ("win03", "lost", "failed", None),
    }
    assert {
        jid: (r["host"], r["status"], r["outcome"], r["rc"]) for jid, r in by_jid.items()
    } == expected
    for record in records:
        assert (record["file"], record["cleanup"]) == ("present", "erased")
    # the remediation ran once for each failing job, on its Windows host
    hooks = sandbox.hook_runs("end")
    assert sorted(h["jid"] for h in hooks) == sorted([failed, timed_out, orphan])
    assert by_jid[ok]["hook"] == "none"
    assert all(by_jid[j]["hook"] == "ok" for j in (failed, timed_out, orphan))
    assert {h["jid"]: h["ping"] for h in hooks} == dict.fromkeys(
        [failed, timed_out, orphan], "pong"
    )
    assert by_jid[failed]["rc"] == 3
    assert sim_job_files(sim_hosts) == {}
    for jid, (host, status, _, _) in expected.items():
        assert f"{host}: {jid} {status}" in rb.text()
    assert "ansible_password" not in rb.text()
    assert_not_shown(
        [rb.text(), sim_hosts.log_path.read_text(encoding="utf-8")],
        {f"{host}'s password": sim_hosts.credentials(host)["password"] for host in sim_hosts.names},
    )
