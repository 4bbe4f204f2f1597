"""The collection as users get it: built, installed into a temporary collections path, the
rulebook run by FQCN from an unrelated directory, with its default playbooks (FQCNs too)."""

from __future__ import annotations

import subprocess

import pytest

from harness.sim_process import SimProcess
from tests.e2e.conftest import BIN, STEP_TIMEOUT_S, Sandbox, sim_job_files, wait_settled
from tests.paths import REPO

pytestmark = pytest.mark.e2e


def _galaxy(sandbox: Sandbox, *args: str) -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", *args],
        cwd=sandbox.root,
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_installed_collection_runs_by_fqcn(sandbox: Sandbox, sim_hosts: SimProcess) -> None:
    dist = sandbox.root / "dist"
    _galaxy(sandbox, "build", "--output-path", str(dist), str(REPO))
    [artifact] = dist.glob("winasync-eda-*.tar.gz")
    installed = sandbox.root / "installed"
    # ansible.windows comes from the dependency collections dir (make setup), not from Galaxy
    _galaxy(sandbox, "install", "--no-deps", "-p", str(installed), str(artifact))
    collection = installed / "ansible_collections" / "winasync" / "eda"
    assert (collection / "extensions/eda/plugins/event_source/async_jobs.py").is_file()
    assert not (collection / "winsim").exists()
    elsewhere = sandbox.root / "elsewhere"
    elsewhere.mkdir()

    rb = sandbox.rulebook(sim_hosts.inventory, collections=[installed], workdir=elsewhere).start()
    ok = sim_hosts.job("win01", "finished", 0.5, stdout="ok")
    failed = sim_hosts.job("win02", "failed", 0.5, rc=4)

    wait_settled(rb, sandbox, 2, lambda: sim_job_files(sim_hosts))
    rb.stop()

    assert (
        f"Loading rulebook from {collection / 'rulebooks' / 'windows_async_jobs.yml'}" in rb.text()
    )
    records = sorted(sandbox.records(), key=lambda r: str(r["status"]))
    assert [(r["jid"], r["status"], r["rc"], r["cleanup"]) for r in records] == [
        (failed, "failed", 4, "erased"),
        (ok, "finished", 0, "erased"),
    ]
    assert sim_job_files(sim_hosts) == {}
