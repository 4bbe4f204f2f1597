"""The reaction playbooks and rulebooks, run for real on localhost (connection: local).

Real async jobs are started with ansible-playbook into a temporary async dir; the reaction
playbooks then get an event as extra vars, exactly as ansible-rulebook passes it. Side effects
are what is checked (record line, hook marker, job file), because ansible-rulebook reports a
failed playbook with exit code 0 anyway. Everything runs under a temporary HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.process import ChildProcess
from tests.paths import REPO
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
TEST_PLAYBOOKS = HERE / "playbooks"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
ANSIBLE_RULEBOOK = BIN / "ansible-rulebook"
# Generous: the machine has 2 cores shared with other test suites.
RUN_TIMEOUT_S = 300.0
JOB_TIMEOUT_S = 120.0
RULEBOOK_TIMEOUT_S = 300.0

if not ANSIBLE_PLAYBOOK.exists():  # pragma: no cover - environment guard
    pytest.skip(f"ansible-playbook not found next to {sys.executable}", allow_module_level=True)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class Local:
    """A throwaway controller setup: HOME, async dir, inventory and record file."""

    root: Path
    home: Path
    async_dir: Path
    inventory: Path
    record: Path
    marker: Path
    env: dict[str, str]

    def run(
        self, playbook: Path | str, extra: dict[str, Any], *, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ansible-playbook with `extra` as an extra-vars file (as ansible-runner does)."""
        vars_file = self.root / f"extra-{time.monotonic_ns()}.json"
        vars_file.write_text(json.dumps(extra), encoding="utf-8")
        return subprocess.run(
            [
                str(ANSIBLE_PLAYBOOK),
                "-i",
                str(self.inventory),
                str(playbook),
                "-e",
                f"@{vars_file}",
            ],
            cwd=self.root,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )

    def start_job(self, command: str, async_s: int = 60) -> str:
        """Start a real async job on localhost; return its job id."""
        id_file = self.root / f"jid-{time.monotonic_ns()}"
        env = dict(self.env, ANSIBLE_ASYNC_DIR=str(self.async_dir))
        proc = self.run(
            TEST_PLAYBOOKS / "start_local_job.yml",
            {"job_command": command, "job_async": async_s, "job_id_file": str(id_file)},
            env=env,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return id_file.read_text(encoding="utf-8").strip()

    def wait_finished(self, jid: str) -> dict[str, Any]:
        """Wait until the job file holds a final result (POSIX: no `started` key, or finished)."""
        path = self.async_dir / jid
        result: dict[str, Any] = {}

        def done() -> bool:
            try:
                data = read_json(path)
            except (OSError, ValueError):
                return False
            if isinstance(data, dict) and (not data.get("started") or data.get("finished")):
                result.update(data)
                return True
            return False

        wait_until(done, JOB_TIMEOUT_S, f"job {jid} to finish")
        return result

    def event(self, jid: str, status: str, **async_job: Any) -> dict[str, Any]:
        job: dict[str, Any] = {
            "host": "localhost",
            "jid": jid,
            "status": status,
            "finished": status != "lost",
            "failed": status != "finished",
            "async_dir": str(self.async_dir),
            "results_file": str(self.async_dir / jid),
        }
        job.update(async_job)
        meta = {"hosts": job["host"], "uuid": f"uuid-{jid}-{status}"}
        return {"ansible_eda": {"event": {"async_job": job, "meta": meta}}}

    def react(
        self, playbook: str, event: dict[str, Any], **extra: Any
    ) -> subprocess.CompletedProcess[str]:
        variables = dict(event, winasync_record_file=str(self.record))
        variables["winasync_test_marker"] = str(self.marker)
        variables.update(extra)
        return self.run(REPO / "playbooks" / playbook, variables)

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def clean_env(home: Path) -> dict[str, str]:
    """The caller's environment without any Ansible or winasync settings, under a temp HOME."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "WINASYNC_", "EDA_"))
    }
    env.update(
        HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_LOCAL_TEMP=str(home / ".ansible" / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(home / ".ansible" / "remote_tmp"),
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".work" / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        ANSIBLE_LOCALHOST_WARNING="0",
    )
    return env


@pytest.fixture
def local(tmp_path: Path) -> Local:
    home = tmp_path / "home"
    async_dir = tmp_path / "async"
    home.mkdir()
    async_dir.mkdir()
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n",
        encoding="utf-8",
    )
    return Local(
        root=tmp_path,
        home=home,
        async_dir=async_dir,
        inventory=inventory,
        record=tmp_path / "records" / "jobs.log",
        marker=tmp_path / "marker.json",
        env=clean_env(home),
    )


HOOK_MARKER = str(TEST_PLAYBOOKS / "hook_marker.yml")
HOOK_FAIL = str(TEST_PLAYBOOKS / "hook_fail.yml")


def test_finished_job_is_followed_up_recorded_and_removed(local: Local) -> None:
    jid = local.start_job("echo hello-winasync")
    local.wait_finished(jid)

    proc = local.react(
        "job_finished.yml", local.event(jid, "finished"), winasync_followup_tasks=HOOK_MARKER
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (local.async_dir / jid).exists()
    job = read_json(local.marker)
    assert job["jid"] == jid
    assert job["host"] == "localhost"
    assert job["status"] == "finished"
    assert job["outcome"] == "finished"
    assert job["failed"] is False
    assert job["file_present"] is True
    assert job["rc"] == 0
    assert job["stdout"] == "hello-winasync"
    [record] = local.records()
    assert record["host"] == "localhost"
    assert record["jid"] == jid
    assert record["status"] == "finished"
    assert record["hook"] == "ok"
    assert record["cleanup"] == "erased"
    assert record["run"]


def test_second_run_for_a_removed_job_succeeds_and_skips_the_followup(local: Local) -> None:
    jid = local.start_job("echo once")
    local.wait_finished(jid)
    event = local.event(jid, "finished")
    first = local.react("job_finished.yml", event, winasync_followup_tasks=HOOK_MARKER)
    assert first.returncode == 0, first.stdout + first.stderr
    local.marker.unlink()

    second = local.react("job_finished.yml", event, winasync_followup_tasks=HOOK_MARKER)

    assert second.returncode == 0, second.stdout + second.stderr
    assert not local.marker.exists(), "the follow-up ran again for a job already handled"
    first_rec, second_rec = local.records()
    assert (first_rec["file"], first_rec["cleanup"], first_rec["hook"]) == (
        "present",
        "erased",
        "ok",
    )
    assert (second_rec["file"], second_rec["cleanup"], second_rec["hook"]) == (
        "gone",
        "already_gone",
        "skipped",
    )
    assert first_rec["run"] != second_rec["run"]


def test_hook_when_gone_runs_the_followup_for_a_removed_job(local: Local) -> None:
    jid = "j123456789012.4242"  # never existed

    proc = local.react(
        "job_finished.yml",
        local.event(jid, "finished"),
        winasync_followup_tasks=HOOK_MARKER,
        winasync_hook_when_gone=True,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = read_json(local.marker)
    assert job["file_present"] is False
    assert job["result"] == {}
    assert local.records()[0]["cleanup"] == "already_gone"


def _remediated(local: Local, jid: str, status: str, **async_job: Any) -> Any:
    """Run job_failed.yml with the marker hook on the job's event; it succeeds and erases the
    job file. What the hook saw of the job."""
    proc = local.react(
        "job_failed.yml",
        local.event(jid, status, **async_job),
        winasync_remediation_tasks=HOOK_MARKER,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (local.async_dir / jid).exists()
    return read_json(local.marker)


def test_failed_job_is_remediated_with_its_rc(local: Local) -> None:
    jid = local.start_job("echo about-to-fail; exit 3")
    final = local.wait_finished(jid)
    assert final["rc"] == 3

    job = _remediated(local, jid, "failed", rc=3)
    assert (job["status"], job["outcome"], job["failed"]) == ("failed", "failed", True)
    assert job["rc"] == 3
    assert job["stdout"] == "about-to-fail"
    [record] = local.records()
    assert (record["status"], record["outcome"], record["rc"]) == ("failed", "failed", 3)
    assert (record["hook"], record["cleanup"]) == ("ok", "erased")


def test_timed_out_job_is_remediated(local: Local) -> None:
    jid = local.start_job("sleep 60", async_s=1)
    final = local.wait_finished(jid)
    assert final.get("failed") is True
    assert "Timeout exceeded" in final.get("msg", "")

    job = _remediated(local, jid, "timed_out")
    assert job["status"] == "timed_out"
    assert "Timeout exceeded" in job["msg"]
    [record] = local.records()
    assert (record["status"], record["cleanup"]) == ("timed_out", "erased")


def test_lost_job_file_is_removed(local: Local) -> None:
    # A job whose watchdog died: the file says running forever (made by hand here).
    jid = "j987654321098.31337"
    (local.async_dir / jid).write_text(
        json.dumps({"started": True, "finished": False, "ansible_job_id": jid}), encoding="utf-8"
    )

    job = _remediated(local, jid, "lost")
    assert job["status"] == "lost"
    assert job["result"]["finished"] is False
    [record] = local.records()
    assert (record["status"], record["hook"], record["cleanup"]) == ("lost", "ok", "erased")


@pytest.mark.parametrize(
    ("playbook", "status", "change"),
    [
        pytest.param("job_failed.yml", "failed", {"jid": "../victim"}, id="jid-traversal"),
        pytest.param("job_failed.yml", "failed", {"jid": "j1.2\n"}, id="jid-trailing-newline"),
        pytest.param("job_failed.yml", "failed", {"jid": "j1.2/../../victim"}, id="jid-suffix"),
        pytest.param("job_failed.yml", "failed", {"jid": 12}, id="jid-not-a-string"),
        pytest.param("job_failed.yml", "failed", {"async_dir": ""}, id="async-dir-empty"),
        pytest.param("job_failed.yml", "failed", {"async_dir": ["x"]}, id="async-dir-list"),
        pytest.param("job_failed.yml", "failed", {"host": "local*"}, id="host-pattern"),
        pytest.param("job_finished.yml", "failed", {}, id="status-for-other-playbook"),
        pytest.param("job_failed.yml", "finished", {}, id="finished-to-job-failed"),
    ],
)
def test_bad_event_fails_validation_and_removes_nothing(
    local: Local, playbook: str, status: str, change: dict[str, Any]
) -> None:
    victim = local.root / "victim"
    victim.write_text("keep me", encoding="utf-8")
    good_jid = "j1.2"
    (local.async_dir / good_jid).write_text('{"rc": 0}', encoding="utf-8")
    event = local.event(good_jid, status)
    event["ansible_eda"]["event"]["async_job"].update(change)

    proc = local.react(playbook, event, winasync_remediation_tasks=HOOK_MARKER)

    assert proc.returncode != 0
    assert "Validate the event" in proc.stdout
    assert "Not a winasync.eda async_job event" in proc.stdout
    assert victim.read_text(encoding="utf-8") == "keep me"
    assert (local.async_dir / good_jid).exists()
    assert not local.marker.exists()
    assert local.records() == []


def test_template_text_from_a_job_is_never_rendered(local: Local) -> None:
    # Job output and event text are data: ansible-core would render "{{ }}" in extra vars, so
    # the playbooks must take the job's text from the job file (module results are untrusted).
    from_job = local.root / "rendered-from-job"
    from_event = local.root / "rendered-from-event"
    tail = "{ lookup('ansible.builtin.pipe', 'touch " + str(from_job) + "') }}"
    payload = "{" + tail
    # The command itself has no "{{" (the starter's extra vars would render it): only its
    # output does.
    jid = local.start_job(f"printf '%s%s' '{{' {json.dumps(tail)}")
    local.wait_finished(jid)
    event_text = "{{ lookup('ansible.builtin.pipe', 'touch " + str(from_event) + "') }}"
    event = local.event(
        jid, "finished", stdout=event_text, msg=event_text, result={"stdout": event_text}
    )

    proc = local.react("job_finished.yml", event, winasync_followup_tasks=HOOK_MARKER)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not from_job.exists()
    assert not from_event.exists()
    assert read_json(local.marker)["stdout"] == payload


def test_failing_followup_still_removes_the_file_and_fails_the_run(local: Local) -> None:
    jid = local.start_job("echo ok")
    local.wait_finished(jid)

    proc = local.react(
        "job_finished.yml", local.event(jid, "finished"), winasync_followup_tasks=HOOK_FAIL
    )

    assert proc.returncode != 0
    assert "the test follow-up failed on purpose" in proc.stdout
    assert not (local.async_dir / jid).exists()
    [record] = local.records()
    assert (record["hook"], record["cleanup"]) == ("failed", "erased")


def test_record_file_from_environment(local: Local) -> None:
    jid = "j555.1"
    (local.async_dir / jid).write_text('{"rc": 0, "changed": false}', encoding="utf-8")
    record = local.root / "from-env" / "records.log"
    env = dict(local.env, WINASYNC_RECORD_FILE=str(record))
    variables = local.event(jid, "finished")

    proc = local.run(REPO / "playbooks" / "job_finished.yml", variables, env=env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = record.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["jid"] == jid
    assert not (local.async_dir / jid).exists()


@pytest.mark.parametrize("playbook", ["job_finished.yml", "job_failed.yml"])
def test_without_an_event_no_host_is_targeted_and_the_run_says_why(
    local: Local, playbook: str
) -> None:
    # Every host here, localhost included, would be reached over ssh at an address that
    # answers nothing (TEST-NET-1): any task that touched one would show it unreachable.
    local.inventory.write_text(
        "win01 ansible_connection=ssh ansible_host=192.0.2.1 ansible_timeout=2\n"
        "localhost ansible_connection=ssh ansible_host=192.0.2.2 ansible_timeout=2\n",
        encoding="utf-8",
    )
    listed = local.run(REPO / "playbooks" / playbook, {"ansible_eda": {}})
    proc = local.run(
        REPO / "playbooks" / playbook,
        {"winasync_record_file": str(local.record), "winasync_followup_tasks": HOOK_MARKER},
    )

    assert proc.returncode != 0
    assert "No winasync.eda event: ansible_eda.event.async_job.host is not set" in proc.stdout
    assert "win01" not in proc.stdout
    assert "UNREACHABLE" not in proc.stdout
    recap = proc.stdout.split("PLAY RECAP", 1)[1].split()
    assert recap[recap.index("localhost") + 1 :][:5] == [
        ":", "ok=0", "changed=0", "unreachable=0", "failed=1",
    ]  # fmt: skip
    assert "Validate the event" not in proc.stdout
    assert local.records() == []
    assert not local.marker.exists()
    # An event without a host: the same stop, before any host is targeted.
    assert listed.returncode != 0
    assert "No winasync.eda event" in listed.stdout
    assert "win01" not in listed.stdout


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="no-command"),
        pytest.param({"winasync_command": "  "}, id="blank-command"),
        pytest.param({"winasync_command": "Get-Date", "winasync_async": "soon"}, id="bad-async"),
        pytest.param({"winasync_command": "Get-Date", "winasync_async": 0}, id="zero-async"),
    ],
)
def test_start_job_validates_its_inputs(local: Local, extra: dict[str, Any]) -> None:
    # Only the validation can run here (the job itself needs a Windows host): it must stop
    # the play before anything is started.
    if not (REPO / ".work/collections/ansible_collections/ansible/windows").is_dir():
        pytest.skip("ansible.windows is not unpacked in .work/collections")

    proc = local.run(REPO / "playbooks" / "start_job.yml", {"winasync_hosts": "localhost", **extra})

    assert proc.returncode != 0
    assert "Validate the inputs" in proc.stdout
    assert "Set winasync_command to a non-empty PowerShell command" in proc.stdout
    assert "Start the command without waiting for it" not in proc.stdout


# --- the rulebooks, with a stand-in for the event source --------------------------------------

STUB_SOURCE = '''\
"""Stand-in for winasync.eda.async_jobs: records its args, emits the events of a file."""
import asyncio
import json
import os


async def main(queue, args):
    out = os.environ["WINASYNC_STUB_ARGS"]
    seen = {k: v for k, v in args.items() if k not in ("password", "eda_feedback_queue")}
    seen["password_given"] = args.get("password") is not None
    with open(out + ".tmp", "w") as f:
        json.dump(seen, f)
    os.replace(out + ".tmp", out)
    with open(os.environ["WINASYNC_STUB_EVENTS"]) as f:
        events = json.load(f)
    for event in events:
        await queue.put(event)
    await asyncio.Event().wait()
'''


def _needs_rulebook() -> None:
    if shutil.which("java") is None or not ANSIBLE_RULEBOOK.exists():
        pytest.skip("ansible-rulebook needs java and the venv's ansible-rulebook")


@pytest.fixture
def stub_collections(tmp_path: Path) -> Path:
    """A collections dir where winasync.eda is this checkout with a stand-in event source."""
    _needs_rulebook()
    root = tmp_path / "collections"
    coll = root / "ansible_collections" / "winasync" / "eda"
    source_dir = coll / "extensions" / "eda" / "plugins" / "event_source"
    source_dir.mkdir(parents=True)
    for name in ("galaxy.yml", "meta", "rulebooks", "playbooks"):
        (coll / name).symlink_to(REPO / name)
    (source_dir / "async_jobs.py").write_text(STUB_SOURCE, encoding="utf-8")
    return root


@pytest.fixture
def checkout_collections(tmp_path: Path) -> Path:
    """A collections dir where winasync.eda is this checkout itself, real source included."""
    _needs_rulebook()
    if not (REPO / "extensions/eda/plugins/event_source/async_jobs.py").exists():
        pytest.skip("the event source is not there yet")
    root = tmp_path / "checkout-collections"
    (root / "ansible_collections" / "winasync").mkdir(parents=True)
    (root / "ansible_collections" / "winasync" / "eda").symlink_to(REPO)
    return root


StartRulebook = Callable[[list[str], Path, list[dict[str, Any]], dict[str, Any]], ChildProcess]


@pytest.fixture
def run_rulebook(local: Local, request: pytest.FixtureRequest) -> Iterator[StartRulebook]:
    """Start ansible-rulebook; the collections dir is the fixture the test names first."""
    started: list[ChildProcess] = []
    names = ("stub_collections", "checkout_collections")
    wanted = [name for name in request.fixturenames if name in names]
    assert wanted, "a rulebook test needs stub_collections or checkout_collections"
    collections: Path = request.getfixturevalue(wanted[0])

    def start(
        args: list[str], cwd: Path, events: list[dict[str, Any]], variables: dict[str, Any]
    ) -> ChildProcess:
        events_file = local.root / "events.json"
        events_file.write_text(json.dumps(events), encoding="utf-8")
        vars_file = local.root / "rulebook-vars.yml"
        vars_file.write_text(json.dumps(variables), encoding="utf-8")
        env = dict(
            local.env,
            ANSIBLE_COLLECTIONS_PATH=f"{collections}{os.pathsep}{REPO / '.work' / 'collections'}",
            WINASYNC_STUB_ARGS=str(local.root / "source-args.json"),
            WINASYNC_STUB_EVENTS=str(events_file),
            WINASYNC_PASSWORD="not-a-real-password",
            WINASYNC_TEST_MARKER=str(local.marker),
        )
        output = local.root / "rulebook.out"
        cmd = [
            str(ANSIBLE_RULEBOOK),
            *args,
            "-i",
            str(local.inventory),
            "--vars",
            str(vars_file),
            "--env-vars",
            "WINASYNC_PASSWORD",
        ]
        output.unlink(missing_ok=True)
        rulebook = ChildProcess(cmd, log_path=output, env=env, cwd=cwd, name="ansible-rulebook")
        started.append(rulebook.start())
        return rulebook

    yield start
    # the whole tree: ansible-runner starts each playbook in a session of its own
    for rulebook in started:
        rulebook.stop(grace=30)


def _rulebook_events(local: Local, finished: str, failed: str) -> list[dict[str, Any]]:
    def event(jid: str, status: str) -> dict[str, Any]:
        return dict(local.event(jid, status)["ansible_eda"]["event"])

    return [
        event(finished, "finished"),
        event(finished, "finished"),  # a repeat: the throttle lets one run through
        event(failed, "failed"),
        {
            "async_host": {"host": "win-gone", "status": "unreachable", "error": "refused"},
            "meta": {"hosts": "win-gone"},
        },
    ]


def _wait_for_records(local: Local, rulebook: ChildProcess, count: int) -> None:
    def enough() -> bool:
        if not rulebook.running:
            pytest.fail(f"ansible-rulebook ended early:\n{rulebook.text()}")
        return len(local.records()) >= count

    wait_until(enough, RULEBOOK_TIMEOUT_S, f"{count} record lines")


def _rulebook_on_two_ended_jobs(
    local: Local,
    run_rulebook: StartRulebook,
    failed_rc: int,
    args: list[str],
    cwd: Path,
    variables: dict[str, Any],
) -> tuple[str, str, ChildProcess]:
    """Two jobs that ended (one finished, one failed with ``failed_rc``), then ansible-rulebook
    on their events (``_rulebook_events``) until both playbooks wrote their record line (the
    record file is added to ``variables``)."""
    finished = local.start_job("echo done")
    failed = local.start_job(f"exit {failed_rc}")
    local.wait_finished(finished)
    local.wait_finished(failed)
    variables = {"winasync_record_file": str(local.record), **variables}
    rulebook = run_rulebook(args, cwd, _rulebook_events(local, finished, failed), variables)
    _wait_for_records(local, rulebook, 2)
    return finished, failed, rulebook


def test_rulebook_from_installed_collection_runs_the_playbooks(
    local: Local, stub_collections: Path, run_rulebook: StartRulebook
) -> None:
    variables = {"winasync_interval": 0.5, "winasync_inventory": str(local.inventory)}
    finished, failed, rulebook = _rulebook_on_two_ended_jobs(
        local, run_rulebook, 4, ["-r", "winasync.eda.windows_async_jobs"], local.root, variables
    )

    records = local.records()
    assert [(r["jid"], r["status"]) for r in records] == [
        (finished, "finished"),
        (failed, "failed"),
    ], "the repeated event ran a second playbook (throttle)"
    assert all(r["cleanup"] == "erased" for r in records)
    assert not (local.async_dir / finished).exists()
    assert not (local.async_dir / failed).exists()
    args = read_json(local.root / "source-args.json")
    assert args == {
        "inventory": str(local.inventory),
        "limit": None,
        "username": None,
        "interval": 0.5,
        "state_file": None,
        "redeliver_after": None,
        "host_events": True,
        "shard": None,
        "password_given": True,
        # no drools_db_* variables: the PostgreSQL checkpoint is off
        "checkpoint_id": None,
        "checkpoint_db": dict.fromkeys(
            [
                "host",
                "port",
                "dbname",
                "user",
                "password",
                "sslmode",
                "sslrootcert",
                "sslcert",
                "sslkey",
            ]
        ),
    }
    wait_until(
        lambda: "host win-gone is unreachable" in rulebook.text(),
        RULEBOOK_TIMEOUT_S,
        "the host event's debug line",
    )
    assert "not-a-real-password" not in rulebook.text()


def test_rulebook_from_checkout_with_playbook_paths(
    local: Local, stub_collections: Path, run_rulebook: StartRulebook
) -> None:
    # From a checkout, plain paths work too: run_playbook copies the playbook's directory
    # (playbooks/, with tasks/) for each run.
    variables = {
        "winasync_finished_playbook": "playbooks/job_finished.yml",
        "winasync_failed_playbook": "playbooks/job_failed.yml",
        "winasync_remediation_tasks": HOOK_MARKER,
        "winasync_host_events": "false",
    }
    finished, failed, _rulebook = _rulebook_on_two_ended_jobs(
        local, run_rulebook, 5, ["-r", "rulebooks/windows_async_jobs.yml"], REPO, variables
    )

    records = local.records()
    assert [(r["jid"], r["status"], r["cleanup"], r["hook"]) for r in records] == [
        (finished, "finished", "erased", "none"),
        (failed, "failed", "erased", "ok"),
    ]
    job = read_json(local.marker)
    assert (job["jid"], job["rc"]) == (failed, 5)
    assert read_json(local.root / "source-args.json")["host_events"] is False
