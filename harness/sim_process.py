"""A fleet of simulated hosts in a process of its own (``python -m winsim serve``).

The end-to-end tests, the demo and the soak run the fleet apart from the clients, as a real
fleet would be: the event source, ansible-rulebook and ansible-playbook reach it only over
WinRM on loopback, and the driver scripts steer it through the serve command's control socket.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from harness import REPO
from harness.process import ChildProcess, Lifecycle, wait_until
from winsim.cli import SOCKET_NAME, meta_dir

READY_TIMEOUT_S = 60.0


class SimProcessError(RuntimeError):
    """The simulated hosts did not start, or refused a command."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("winsim", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def control(state: Path, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request to a running ``serve``'s control socket (blocking; usable from any thread,
    also inside a running event loop, unlike ``winsim.cli``'s client)."""
    conn = _UnixConnection(meta_dir(state) / SOCKET_NAME, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read() or b"null")
    finally:
        conn.close()
    if response.status >= 400:
        raise SimProcessError(str(data.get("error", data) if isinstance(data, dict) else data))
    return data


class SimProcess(Lifecycle):
    """Start ``python -m winsim serve`` and steer it; stopped (and waited for) on exit."""

    def __init__(
        self,
        state: Path,
        hosts: int = 2,
        *,
        https: bool = True,
        auth: str = "basic",
        generation: str | None = None,
        prefix: str = "win",
        log: Path | None = None,
    ) -> None:
        self.state = state.resolve()
        self.count = hosts
        self.https = https
        self.auth = auth
        self.generation = generation
        self.prefix = prefix
        self.log_path = log or self.state / "winsim.log"
        self._process: ChildProcess | None = None
        self.hosts: list[dict[str, Any]] = []

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> SimProcess:
        self.state.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "winsim", "serve", "--hosts", str(self.count)]
        cmd += ["--state", str(self.state), "--prefix", self.prefix, "--auth", self.auth]
        if self.https:
            cmd.append("--https")
        if self.generation:
            cmd += ["--generation", self.generation]
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        process = ChildProcess(
            cmd, log_path=self.log_path, env={**os.environ, "PYTHONPATH": path}, cwd=REPO
        )
        self._process = process.start()
        sock = meta_dir(self.state) / SOCKET_NAME
        try:
            ready = wait_until(
                lambda: not process.running or self._listing(sock), READY_TIMEOUT_S, step=0.05
            )
            if not process.running:
                raise SimProcessError(
                    f"winsim serve exited with {process.returncode}; see {self.log_path}"
                )
            if not ready:
                raise SimProcessError(
                    f"winsim serve not ready after {READY_TIMEOUT_S:.0f} s; see {self.log_path}"
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _listing(self, sock: Path) -> bool:
        if not sock.exists():
            return False
        try:
            self.hosts = list(control(self.state, "GET", "/hosts"))
        except OSError:  # the socket file exists before it listens: look again
            return False
        return True

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop()

    # --- what clients need ----------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [h["name"] for h in self.hosts]

    @property
    def inventory(self) -> Path:
        """A psrp inventory of every host (0600: it holds the passwords)."""
        return meta_dir(self.state) / "inventory.yml"

    @property
    def client_env(self) -> dict[str, str]:
        """What a client's environment needs (``--auth kerberos``: where the KDC is), from the
        ``env`` file of ``export`` lines the sim writes."""
        path = meta_dir(self.state) / "env"
        if not path.exists():
            return {}
        env: dict[str, str] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                key, _sep, value = words[1].partition("=")
                env[key] = value
        return env

    @property
    def ca_bundle(self) -> Path | None:
        bundle = self.hosts[0].get("ca_bundle") if self.hosts else None
        return Path(bundle) if bundle else None

    def credentials(self, host: str) -> dict[str, Any]:
        entry = self._entry(host)
        data: dict[str, Any] = json.loads(Path(entry["credentials"]).read_text(encoding="utf-8"))
        return data

    def async_dir(self, host: str, user: str = "ansible") -> Path:
        """The directory on this disk that stands for the host's ``%USERPROFILE%\\.ansible_async``."""
        return Path(self._entry(host)["root"]) / "Users" / user / ".ansible_async"

    def job_files(self, host: str) -> list[str]:
        directory = self.async_dir(host)
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    # --- steering -------------------------------------------------------------------------

    def job(
        self, host: str, outcome: str = "finished", duration_s: float = 1.0, **options: Any
    ) -> str:
        """Start a scripted job (see ``SimHost.start_job``); returns its jid."""
        body = {"host": host, "outcome": outcome, "duration_s": duration_s, **options}
        return str(control(self.state, "POST", "/job", body)["jid"])

    def reboot(self, host: str) -> None:
        control(self.state, "POST", "/reboot", {"host": host})

    def orphan(self, host: str, jid: str) -> None:
        control(self.state, "POST", "/orphan", {"host": host, "jid": jid})

    def _entry(self, host: str) -> dict[str, Any]:
        for entry in self.hosts:
            if entry["name"] == host:
                return entry
        raise SimProcessError(f"no host {host!r} in this fleet")
