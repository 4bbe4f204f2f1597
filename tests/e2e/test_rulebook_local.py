"""The whole chain on this machine: real async jobs, the real ansible-rulebook with the shipped
rulebook, the source's local backend, the follow-up playbooks; side effects are checked."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import LocalHost, Sandbox, start_local_jobs, wait_settled

pytestmark = pytest.mark.e2e

JOBS = [
    {"name": "ok", "command": "echo all-good", "async": 60},
    {"name": "rc", "command": "echo about-to-fail; exit 3", "async": 60},
    {"name": "timeout", "command": "sleep 60", "async": 1},
]


def test_each_local_job_is_followed_up_once_and_removed(
    sandbox: Sandbox, localhost: LocalHost
) -> None:
    rb = sandbox.rulebook(localhost.inventory).start()

    jids = start_local_jobs(sandbox, localhost, JOBS)
    wait_settled(rb, sandbox, len(JOBS), localhost.job_files)
    rb.stop()

    by_jid = {r["jid"]: r for r in sandbox.records()}
    assert len(sandbox.records()) == len(JOBS), "a follow-up ran more than once"
    assert set(by_jid) == set(jids.values())
    ok, rc, timeout = (by_jid[jids[name]] for name in ("ok", "rc", "timeout"))
    assert (ok["status"], ok["outcome"], ok["rc"]) == ("finished", "finished", 0)
    assert (rc["status"], rc["outcome"], rc["rc"]) == ("failed", "failed", 3)
    assert (timeout["status"], timeout["outcome"]) == ("timed_out", "failed")
    for record in by_jid.values():
        assert record["host"] == "localhost"
        assert (record["file"], record["cleanup"]) == ("present", "erased")
        assert record["redelivered"] is False
    assert localhost.job_files() == []
    # the events the source emitted, as ansible-rulebook logged them
    for name, status in (("ok", "finished"), ("rc", "failed"), ("timeout", "timed_out")):
        assert f"localhost: {jids[name]} {status}" in rb.text()
