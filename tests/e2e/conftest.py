"""Shared pieces of the end-to-end tests: a sandbox, the real ansible-rulebook, a record reader.

Every test runs under a temporary HOME, with ``winasync.eda`` reached as this checkout through a
symlinked collections dir (``checkout_collections``), and counts what the playbooks did from
their side effects: the record file (one JSON line per playbook run), the hook file (one line
per follow-up task run) and the job files left on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.rulebook import (
    ANSIBLE_RULEBOOK,
    DEPENDENCY_COLLECTIONS,
    Rulebook,
    checkout_collections,
    sandbox_env,
)
from harness.sim_process import SimProcess
from tests.paths import REPO

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
# Generous deadlines: the machine has 2 cores shared with other suites, and each playbook run
# takes 1 to 15 s there. A deadline only bounds a failure; a passing test never waits for it.
STEP_TIMEOUT_S = 180.0
JOB_ID_RE = re.compile(r'"ansible_job_id": "(j\d{1,12}\.\d+)"')

# A follow-up task file (winasync_followup_tasks / winasync_remediation_tasks): it appends one
# JSON line per run to $E2E_HOOKS, waits for $E2E_GATE when set (to hold a playbook mid-run),
# then appends an "end" line. On a Windows host it first talks to the host over psrp.
_ENV = "lookup('ansible.builtin.env', '{}')"
_HOOK_LINE = {
    "jid": "{{ winasync_job.jid }}",
    "host": "{{ winasync_job.host }}",
    "status": "{{ winasync_job.status }}",
    "rc": "{{ winasync_job.rc }}",
    "redelivered": "{{ winasync_job.redelivered }}",
    # "pong" when win_ping reached the Windows host over psrp
    "ping": "{{ e2e_ping.ping | default('') }}",
}


def _note(phase: str) -> dict[str, Any]:
    return {
        "name": f"Note that the follow-up reached {phase}",
        "ansible.builtin.shell": (
            "printf '%s\\n' {{ winasync_hook_line | combine({'phase': '" + phase + "'})"
            " | to_json | quote }} >> {{ " + _ENV.format("E2E_HOOKS") + " | quote }}"
        ),
        "delegate_to": "localhost",
        "changed_when": True,
        "vars": {"winasync_hook_line": dict(_HOOK_LINE)},
    }


HOOK_TASKS: list[dict[str, Any]] = [
    {
        "name": "Reach the job's host over its own connection",
        "ansible.windows.win_ping": None,
        "register": "e2e_ping",
        "when": "ansible_connection | default('') == 'psrp'",
    },
    _note("start"),
    {
        "name": "Wait for the gate, when a test holds the follow-ups",
        "ansible.builtin.wait_for": {
            "path": "{{ " + _ENV.format("E2E_GATE") + " }}",
            "timeout": 600,
        },
        "delegate_to": "localhost",
        "when": _ENV.format("E2E_GATE") + " | length > 0",
    },
    _note("end"),
]

# Starts real async jobs on localhost, as users do, and writes their job ids.
LOCAL_JOBS_PLAYBOOK = """\
---
- name: Start local async jobs
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Start each job without waiting for it
      ansible.builtin.shell: "{{ item.command }}"
      async: "{{ item.async }}"
      poll: 0
      loop: "{{ e2e_jobs }}"
      register: started
      changed_when: true

    - name: Write the job ids
      ansible.builtin.copy:
        dest: "{{ e2e_jids_file }}"
        content: "{{ dict(e2e_jobs | map(attribute='name') | zip(started.results | map(attribute='ansible_job_id'))) | to_json }}"
        mode: "0600"
"""


def json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="session", autouse=True)
def _needs_the_engine() -> None:
    missing = [
        what
        for what, ok in (
            ("java", shutil.which("java") is not None),
            ("ansible-rulebook", ANSIBLE_RULEBOOK.exists()),
            ("ansible-playbook", ANSIBLE_PLAYBOOK.exists()),
            (
                "ansible.windows (make setup)",
                (DEPENDENCY_COLLECTIONS / "ansible_collections" / "ansible" / "windows").is_dir(),
            ),
        )
        if not ok
    ]
    if missing:
        pytest.skip(f"end-to-end tests need {', '.join(missing)}")


@dataclass
class Sandbox:
    """A temporary controller: HOME, record and hook files, a collections dir for the checkout."""

    root: Path
    env: dict[str, str]
    collections: Path
    record: Path
    hooks: Path
    hook_tasks: Path
    gate: Path
    rulebooks: list[Rulebook] = field(default_factory=list)

    def rulebook(
        self,
        inventory: Path,
        variables: Mapping[str, Any] | None = None,
        *,
        rulebook: str | Path = "winasync.eda.windows_async_jobs",
        name: str = "rulebook",
        persistence_id: str | None = None,
        collections: Sequence[Path] | None = None,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> Rulebook:
        """A Rulebook (not started) for the shipped rulebook, watching ``inventory``."""
        merged: dict[str, Any] = {
            "winasync_inventory": str(inventory),
            "winasync_interval": 0.5,
            "winasync_record_file": str(self.record),
        }
        merged.update(variables or {})
        rb = Rulebook(
            rulebook,
            inventory,
            workdir or self.root,
            dict(env or self.env),
            variables=merged,
            collections=list(collections if collections is not None else [self.collections]),
            persistence_id=persistence_id,
            name=name,
        )
        self.rulebooks.append(rb)
        return rb

    def records(self) -> list[dict[str, Any]]:
        return json_lines(self.record)

    def hook_runs(self, phase: str = "start") -> list[dict[str, Any]]:
        return [h for h in json_lines(self.hooks) if h.get("phase") == phase]

    def playbook(
        self, playbook: Path | str, inventory: Path, extra: Mapping[str, Any], **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ansible-playbook with ``extra`` as an extra-vars file."""
        vars_file = self.root / f"extra-{os.urandom(4).hex()}.json"
        vars_file.write_text(json.dumps(dict(extra)), encoding="utf-8")
        run_env = dict(self.env)
        run_env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(
            [str(self.collections), str(DEPENDENCY_COLLECTIONS)]
        )
        run_env.update(env)
        return subprocess.run(
            [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(playbook), "-e", f"@{vars_file}"],
            cwd=self.root,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            check=False,
        )


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    hook_tasks = tmp_path / "hook_tasks.yml"
    hook_tasks.write_text(yaml.safe_dump(HOOK_TASKS, sort_keys=False), encoding="utf-8")
    hooks = tmp_path / "hooks.jsonl"
    box = Sandbox(
        root=tmp_path,
        env=sandbox_env(tmp_path / "home", {"E2E_HOOKS": str(hooks), "E2E_GATE": ""}),
        collections=checkout_collections(tmp_path / "collections"),
        record=tmp_path / "records" / "jobs.jsonl",
        hooks=hooks,
        hook_tasks=hook_tasks,
        gate=tmp_path / "gate",
    )
    yield box
    left: dict[str, list[int]] = {}
    for rb in box.rulebooks:
        rb.stop()
        if rb.leftovers():
            left[rb.name] = rb.leftovers()
    assert not left, f"processes left running: {left}"


@dataclass
class LocalHost:
    """localhost watched through the source's local backend, with its own async dir."""

    async_dir: Path
    inventory: Path

    def job_files(self) -> list[str]:
        return sorted(p.name for p in self.async_dir.iterdir()) if self.async_dir.is_dir() else []


@pytest.fixture
def localhost(sandbox: Sandbox) -> LocalHost:
    async_dir = sandbox.root / "async"
    async_dir.mkdir()
    inventory = sandbox.root / "inventory.ini"
    inventory.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}"
        f" ansible_async_dir={async_dir}\n",
        encoding="utf-8",
    )
    # the follow-up playbooks take the async dir from the event; the starters from here
    sandbox.env["ANSIBLE_ASYNC_DIR"] = str(async_dir)
    return LocalHost(async_dir, inventory)


def start_local_jobs(
    sandbox: Sandbox, host: LocalHost, jobs: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """Start real async jobs on localhost (``name``, ``command``, ``async``); name -> jid."""
    playbook = sandbox.root / "start_local_jobs.yml"
    playbook.write_text(LOCAL_JOBS_PLAYBOOK, encoding="utf-8")
    jids_file = sandbox.root / f"jids-{os.urandom(4).hex()}.json"
    proc = sandbox.playbook(
        playbook, host.inventory, {"e2e_jobs": list(jobs), "e2e_jids_file": str(jids_file)}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jids: dict[str, str] = json.loads(jids_file.read_text(encoding="utf-8"))
    return jids


@pytest.fixture
def sim_hosts(tmp_path: Path) -> Iterator[SimProcess]:
    """Three simulated Windows hosts (https, CA-validated), in a process of their own."""
    with SimProcess(tmp_path / "sim", hosts=3) as running:
        yield running


def sim_job_files(sim_hosts: SimProcess) -> dict[str, list[str]]:
    """Job files left on each simulated disk (hosts without any left out)."""
    return {host: files for host in sim_hosts.names if (files := sim_hosts.job_files(host))}


def start_windows_jobs(
    sandbox: Sandbox, sim_hosts: SimProcess, jobs: Sequence[tuple[str, str, int]]
) -> list[str]:
    """Start ``(host, command, async_s)`` jobs with playbooks/start_job.yml, all at once."""
    procs = []
    for host, command, async_s in jobs:
        vars_file = sandbox.root / f"start-{os.urandom(4).hex()}.json"
        vars_file.write_text(
            json.dumps(
                {"winasync_hosts": host, "winasync_command": command, "winasync_async": async_s}
            ),
            encoding="utf-8",
        )
        env = dict(sandbox.env)
        env["ANSIBLE_COLLECTIONS_PATH"] = str(DEPENDENCY_COLLECTIONS)
        procs.append(
            subprocess.Popen(
                [
                    str(ANSIBLE_PLAYBOOK),
                    "-i",
                    str(sim_hosts.inventory),
                    str(REPO / "playbooks" / "start_job.yml"),
                    "-e",
                    f"@{vars_file}",
                ],
                cwd=sandbox.root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    jids = []
    for proc in procs:
        out, _ = proc.communicate(timeout=STEP_TIMEOUT_S)
        assert proc.returncode == 0, out
        match = JOB_ID_RE.search(out)
        assert match, out
        jids.append(match.group(1))
    return jids


def wait_settled(rb: Rulebook, sandbox: Sandbox, count: int, files_left: Any) -> None:
    """Wait for ``count`` records and no job file left, then for the run to be idle.

    Idle: no playbook running and one more poll cycle reported by the source after that, so
    a repeated follow-up, if any were coming, would have been emitted by then.
    """
    rb.wait_for(
        lambda: len(sandbox.records()) >= count and not files_left(),
        STEP_TIMEOUT_S,
        f"{count} follow-ups and no job file left "
        f"(records: {len(sandbox.records())}, files: {files_left()})",
    )
    rb.wait_for(lambda: not rb.playbooks_running(), STEP_TIMEOUT_S, "the playbooks to end")
    cycles = rb.text().count("poll cycle (")
    rb.wait_for(
        lambda: rb.text().count("poll cycle (") > cycles, STEP_TIMEOUT_S, "one more poll cycle"
    )
    rb.wait_for(lambda: not rb.playbooks_running(), STEP_TIMEOUT_S, "the playbooks to end")
