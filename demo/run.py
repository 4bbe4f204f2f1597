"""The demo: simulated Windows hosts, async jobs started with playbooks/start_job.yml, the shipped
rulebook reacting; each event and follow-up is shown as it happens, then a summary table.

Everything it starts (the simulated hosts, ansible-rulebook and its playbooks, the job starters)
is stopped before it returns, and its files live in a temporary directory removed at the end
(kept with ``--workdir``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.report import JobState, table
from demo.scenario import HOSTS, JOBS, DemoJob
from demo.watch import Event, HostEvent, LineTail, parse_log_line, parse_record
from harness import REPO
from harness.rulebook import (
    ANSIBLE_RULEBOOK,
    BIN,
    DEPENDENCY_COLLECTIONS,
    READY_LINE,
    Rulebook,
    checkout_collections,
    sandbox_env,
)
from harness.sim_process import SimProcess

log = logging.getLogger(__name__)

RULEBOOK = "winasync.eda.windows_async_jobs"
JOB_ID_RE = re.compile(r'"ansible_job_id": "(j\d{1,12}\.\d+)"')
TICK_S = 0.2


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def missing_prerequisites() -> list[str]:
    checks = {
        "java (17+)": shutil.which("java") is not None,
        f"ansible-rulebook in {BIN}": ANSIBLE_RULEBOOK.exists(),
        f"ansible-playbook in {BIN}": (BIN / "ansible-playbook").exists(),
        f"ansible.windows in {DEPENDENCY_COLLECTIONS}": (
            DEPENDENCY_COLLECTIONS / "ansible_collections" / "ansible" / "windows"
        ).is_dir(),
    }
    return [what for what, ok in checks.items() if not ok]


@dataclass
class Starter:
    """One run of playbooks/start_job.yml."""

    job: DemoJob
    proc: subprocess.Popen[str]


class Demo:
    def __init__(self, workdir: Path, interval: float, timeout: float) -> None:
        self.workdir = workdir
        self.interval = interval
        self.timeout = timeout
        self.started_at = time.monotonic()
        self.states = {job.name: JobState(job) for job in JOBS}
        self.by_jid: dict[str, JobState] = {}
        # events or records that came before their starter reported the jid
        self.early_events: list[Event] = []
        self.early_records: list[dict[str, Any]] = []
        self.record_file = workdir / "records.jsonl"
        self.env = sandbox_env(workdir / "home")

    def say(self, text: str) -> None:
        say(f"[{time.monotonic() - self.started_at:6.1f}s] {text}")

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        say(
            f"winasync.eda demo: {len(HOSTS)} simulated Windows hosts, {len(JOBS)} async jobs, "
            f"the rulebook {RULEBOOK}"
        )
        # what most Windows fleets run: Negotiate (NTLM) over http with WinRM message encryption
        with SimProcess(
            self.workdir / "sim", hosts=len(HOSTS), https=False, auth="negotiate"
        ) as sim_hosts:
            self.say(
                f"simulated hosts up: {', '.join(sim_hosts.names)} "
                "(WinRM over http on 127.0.0.1, Negotiate/NTLM with message encryption)"
            )
            rulebook = Rulebook(
                RULEBOOK,
                sim_hosts.inventory,
                self.workdir,
                self.env,
                variables={
                    "winasync_inventory": str(sim_hosts.inventory),
                    "winasync_interval": self.interval,
                    "winasync_record_file": str(self.record_file),
                },
                collections=[checkout_collections(self.workdir / "collections")],
                name="ansible-rulebook",
            )
            starters: list[Starter] = []
            try:
                rulebook.start()
                self.say(f"ansible-rulebook starting, log: {rulebook.log}")
                starters = [self._start(job, sim_hosts) for job in JOBS]
                self._watch(sim_hosts, rulebook, starters)
            finally:
                for starter in starters:
                    if starter.proc.poll() is None:
                        starter.proc.kill()
                    starter.proc.wait()
                rulebook.stop()
            for state in self.states.values():
                if state.jid is not None:
                    state.file_left = state.jid in sim_hosts.job_files(state.job.host)
        self.say("stopped ansible-rulebook and the simulated hosts")
        say("")
        say(table(list(self.states.values())))
        say("")
        states = list(self.states.values())
        good = sum(1 for s in states if s.as_expected)
        if good == len(states):
            say(
                f"All {len(states)} jobs were handled as expected: one follow-up each, job file removed."
            )
            return 0
        say(f"{len(states) - good} of {len(states)} jobs were NOT handled as expected.")
        return 1

    def _start(self, job: DemoJob, sim_hosts: SimProcess) -> Starter:
        extra = {
            "winasync_hosts": job.host,
            "winasync_command": job.command,
            "winasync_async": job.async_s,
        }
        vars_file = self.workdir / f"start-{job.name}.json"
        vars_file.write_text(json.dumps(extra), encoding="utf-8")
        env = dict(self.env, ANSIBLE_COLLECTIONS_PATH=str(DEPENDENCY_COLLECTIONS))
        cmd = [
            str(BIN / "ansible-playbook"),
            "-i",
            str(sim_hosts.inventory),
            str(REPO / "playbooks" / "start_job.yml"),
            "-e",
            f"@{vars_file}",
        ]
        self.say(f"starting job {job.name!r} on {job.host}: {job.command} (async {job.async_s} s)")
        proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return Starter(job, proc)

    def _watch(
        self, sim_hosts: SimProcess, rulebook: Rulebook, starters: Sequence[Starter]
    ) -> None:
        deadline = self.started_at + self.timeout
        log_tail = LineTail(rulebook.log)
        record_tail = LineTail(self.record_file)
        pending = list(starters)
        ready = False
        while True:
            for starter in [s for s in pending if s.proc.poll() is not None]:
                pending.remove(starter)
                self._started(starter, sim_hosts)
            for line in log_tail.new_lines():
                if not ready and READY_LINE in line:
                    ready = True
                    self.say("ansible-rulebook is waiting for events")
                self._log_line(line)
            for line in record_tail.new_lines():
                if (record := parse_record(line)) is not None:
                    self._record(record)
            settled = all(s.done() or s.jid is None for s in self.states.values())
            if not pending and settled and not rulebook.playbooks_running():
                return
            if not rulebook.running:
                self.say(
                    f"ansible-rulebook ended early (code {rulebook.returncode}); see {rulebook.log}"
                )
                return
            if time.monotonic() > deadline:
                self.say(f"gave up waiting after {self.timeout:.0f} s")
                return
            time.sleep(TICK_S)

    # --- what is shown ---------------------------------------------------------------------

    def _started(self, starter: Starter, sim_hosts: SimProcess) -> None:
        out = starter.proc.stdout.read() if starter.proc.stdout else ""
        job = starter.job
        match = JOB_ID_RE.search(out)
        if starter.proc.returncode != 0 or match is None:
            self.say(
                f"job {job.name!r} did NOT start (start_job.yml exited {starter.proc.returncode})"
            )
            log.debug("start_job.yml output:\n%s", out)
            return
        state = self.states[job.name]
        state.jid = match.group(1)
        self.by_jid[state.jid] = state
        self.say(f"job {job.name!r} started on {job.host}: {state.jid}")
        if job.reboot:
            sim_hosts.reboot(job.host)
            self.say(f"rebooted {job.host}: job {job.name!r} can no longer finish")
        for event in [e for e in self.early_events if e.jid == state.jid]:
            self.early_events.remove(event)
            self._event(event)
        for record in [r for r in self.early_records if r.get("jid") == state.jid]:
            self.early_records.remove(record)
            self._record(record)

    def _log_line(self, line: str) -> None:
        parsed = parse_log_line(line)
        if isinstance(parsed, HostEvent):
            self.say(f"host event   {parsed.host} is {parsed.status}")
        elif isinstance(parsed, Event):
            self._event(parsed)

    def _event(self, event: Event) -> None:
        state = self.by_jid.get(event.jid)
        if state is None:
            self.early_events.append(event)
            return
        state.statuses.append(event.status)
        self.say(
            f"event        {event.host} {event.jid} {event.status:<9} (job {state.job.name!r})"
        )

    def _record(self, record: dict[str, Any]) -> None:
        state = self.by_jid.get(str(record.get("jid")))
        if state is None:
            self.early_records.append(record)
            return
        state.records.append(record)
        playbook = "job_finished" if record.get("outcome") == "finished" else "job_failed"
        self.say(
            f"follow-up    {playbook} ran on {record.get('host')} for job {state.job.name!r}: "
            f"rc {'-' if record.get('rc') is None else record.get('rc')}, "
            f"job file {record.get('cleanup')}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the demo's files (logs, records) here instead of a temp dir",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between two polls of a host"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="give up after this many seconds"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = missing_prerequisites()
    if missing:
        say(f"The demo needs {', '.join(missing)}: run `make setup` (or `make demo`) first.")
        return 2
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="winasync-demo-"))
    try:
        return Demo(workdir, args.interval, args.timeout).run()
    except KeyboardInterrupt:
        say("interrupted; everything the demo started is stopped")
        return 130
    finally:
        if args.workdir is None:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)
