"""Simulated hosts inside the benchmark process: HTTPS with validation, traffic counted per host.

The sim lives here rather than in a process of its own (``harness.sim_process``) because the benchmark
needs what only this process can see: every host's HTTP counters, its fault plan, and the
moment each job wrote its final result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.process import Lifecycle
from harness.sim_thread import SimServerThread
from winsim.cli import inventory_vars
from winsim.host import SimHost
from winsim.jobfiles import Generation
from winsim.jobs import Outcome
from winsim.kdc import Kdc
from winsim.scripts.dispatch import execute
from winsim.server import HostEndpoint

log = logging.getLogger(__name__)

USERNAME = "ansible"
# the status the source should report for each scripted outcome
EXPECTED_STATUS: dict[str, str] = {
    "finished": "finished",
    "failed": "failed",
    "timed_out": "timed_out",
    "orphaned": "lost",
}


@dataclass(frozen=True)
class Traffic:
    """HTTP requests and body bytes seen by the sim (one host or the sum of several)."""

    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    # WS-Management Command requests: one per pipeline (a poll, or a module run of ansible)
    pipelines: int = 0
    # Signal requests: a finished pipeline is terminated with one
    signals: int = 0

    @property
    def bytes(self) -> int:
        return self.bytes_in + self.bytes_out

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.requests + other.requests,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
            self.pipelines + other.pipelines,
            self.signals + other.signals,
        )

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.requests - other.requests,
            self.bytes_in - other.bytes_in,
            self.bytes_out - other.bytes_out,
            self.pipelines - other.pipelines,
            self.signals - other.signals,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "http_requests": self.requests,
            "bytes": self.bytes,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "pipelines": self.pipelines,
        }


@dataclass(frozen=True)
class JobPlan:
    host: str
    outcome: Outcome = "finished"
    duration_s: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRef:
    host: str
    jid: str
    expected: str


def endpoint_traffic(endpoint: HostEndpoint) -> Traffic:
    """One consistent reading of a host's counters."""
    by_action = endpoint.counters.by_action()
    command = by_action.get("Command")
    signal = by_action.get("Signal")
    return Traffic(
        sum(c.requests for c in by_action.values()),
        sum(c.bytes_in for c in by_action.values()),
        sum(c.bytes_out for c in by_action.values()),
        command.requests if command else 0,
        signal.requests if signal else 0,
    )


class InProcessHosts(Lifecycle):
    """``count`` simulated hosts named ``<prefix>NNNN``, each on its own HTTPS port."""

    def __init__(
        self,
        count: int,
        workdir: Path,
        *,
        prefix: str = "win",
        generation: Generation = "2.19-ps51",
        auth: str = "basic",
        https: bool = True,
    ) -> None:
        """``auth``/``https``: how the hosts log the source on (Basic over HTTPS by default)."""
        self.count = count
        self.auth = auth
        self.https = https
        self.workdir = workdir
        self.prefix = prefix
        self.generation: Generation = generation
        self.password = secrets.token_urlsafe(16)
        self.sim = SimServerThread(execute, call_timeout=300.0)
        self.hosts: dict[str, SimHost] = {}
        self.endpoints: dict[str, HostEndpoint] = {}
        # auth kerberos: a realm for the fleet, a domain account, each host's SPN name
        self._context = contextlib.ExitStack()
        self.realm: Kdc | None = None
        self.principal: str | None = None
        self.service_hosts: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> InProcessHosts:
        self.workdir.mkdir(parents=True, exist_ok=True)
        width = max(2, len(str(self.count)))
        names = [f"{self.prefix}{i:0{width}d}" for i in range(1, self.count + 1)]
        try:
            if self.auth == "kerberos":
                # the source runs in a child that inherits this process's environment
                self.realm = self._context.enter_context(Kdc())
                self._context.enter_context(self.realm.in_this_process())
                self.principal = self.realm.add_user(USERNAME, self.password)
                self.service_hosts = {name: self.realm.add_service(name) for name in names}
            self.sim.start()
            self.sim.call(self._add_all(names))
        except BaseException:
            self.stop()
            raise
        return self

    async def _add_all(self, names: Sequence[str]) -> None:
        for name in names:
            host = SimHost(name, self.workdir / "hosts", generation=self.generation)
            host.attach_loop(asyncio.get_running_loop())
            endpoint = await self.sim.server.add_host(
                name,
                host,
                username=USERNAME,
                password=self.password,
                https=self.https,
                auth=self.auth,
                service_host=self.service_hosts.get(name),
            )
            if self.principal:
                endpoint.accounts.map_principal(self.principal, USERNAME)
            self.hosts[name] = host
            self.endpoints[name] = endpoint

    def alias(self, name: str, of: str) -> HostEndpoint:
        """A second endpoint (own port, own counters) onto the same host and disk, so two
        clients of one host are counted apart."""
        endpoint = self.sim.add_host(
            name,
            self.hosts[of],
            username=USERNAME,
            password=self.password,
            https=self.https,
            auth=self.auth,
        )
        self.endpoints[name] = endpoint
        return endpoint

    def set_password(self, name: str, password: str) -> None:
        """Change the account's password on one host (a rotation the source has not seen)."""
        self.endpoints[name].accounts.add_user(USERNAME, password)

    def stop(self) -> None:
        try:
            self.sim.stop()
        finally:
            self._context.close()

    # -- what a client needs ------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.hosts)

    @property
    def ca_bundle(self) -> Path:
        return self.sim.ca_bundle

    def source_host(self, name: str) -> dict[str, Any]:
        """The source's ``hosts`` item for one host (HTTPS: validated against our CA)."""
        endpoint = self.endpoints[name]
        item: dict[str, Any] = {
            "name": name,
            "address": endpoint.address,
            "port": endpoint.port,
            "protocol": "https" if self.https else "http",
            "auth": self.auth,
            "username": self.principal or USERNAME,
            "password": self.password,
        }
        if name in self.service_hosts:
            item["negotiate_hostname_override"] = self.service_hosts[name]
        if self.https:
            item["cert_validation"] = str(self.ca_bundle)
        return item

    def source_hosts(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        return [self.source_host(n) for n in (self.names if names is None else names)]

    def inventory(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """An Ansible inventory (psrp, the hosts' auth; HTTPS validated) for ansible-playbook."""
        hosts = {
            name: inventory_vars(self.endpoints[name], self.password, self.ca_bundle)
            for name in (self.names if names is None else names)
        }
        return {"all": {"hosts": hosts}}

    # -- counters -----------------------------------------------------------------------------

    def traffic(self, names: Iterable[str] | None = None) -> Traffic:
        total = Traffic()
        for name in self.names if names is None else names:
            total = total + endpoint_traffic(self.endpoints[name])
        return total

    def polled_hosts(self, names: Iterable[str] | None = None) -> int:
        """Hosts on which at least one pipeline ran to its end (a Signal came)."""
        return sum(
            1
            for n in (self.names if names is None else names)
            if endpoint_traffic(self.endpoints[n]).signals > 0
        )

    # -- jobs ---------------------------------------------------------------------------------

    def start_jobs(self, plans: Sequence[JobPlan]) -> list[JobRef]:
        """Start scripted jobs, all in one hop onto the sim's loop."""
        return self.sim.call(self._start_jobs(plans))

    async def _start_jobs(self, plans: Sequence[JobPlan]) -> list[JobRef]:
        refs = []
        for plan in plans:
            jid = self.hosts[plan.host].start_job(plan.outcome, plan.duration_s, **plan.options)
            refs.append(JobRef(plan.host, jid, EXPECTED_STATUS[plan.outcome]))
        return refs

    def job_ended(self, ref: JobRef) -> bool:
        return self.hosts[ref.host].jobs[ref.jid].ended.is_set()

    def final_write_at(self, ref: JobRef) -> float | None:
        """When the job's final result was written (its file's last write time), or None."""
        job = self.hosts[ref.host].jobs[ref.jid]
        if job.phase != "done":
            return None
        return job.path.stat().st_mtime_ns / 1e9
