"""A throwaway PostgreSQL cluster for the tests and the soak: ``initdb`` + ``pg_ctl`` in a temp
dir, on a free loopback port, TCP only, password (SCRAM) authentication.

PostgreSQL refuses to run as root, and CI runs as root: the cluster then belongs to ``nobody``
and every server command runs through ``setpriv`` as that user. The data dir lives in a fresh
``/tmp`` dir of its own (pytest's temp dirs are 0700 root, which ``nobody`` cannot enter).
The server binaries come from Debian's ``postgresql`` package (``tools/ensure-postgres``).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.process import Lifecycle, ProcessError

log = logging.getLogger(__name__)

UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_S = 60


class PostgresError(ProcessError):
    """The cluster could not be created, started or stopped."""


def server_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``pg_ctl``."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresCluster(Lifecycle):
    """One cluster: ``start()`` creates and starts it, ``stop()`` stops it and removes it.

    ``pause()``/``resume()`` stop and start the same server (its data kept), for outages.
    """

    user: str = "eda"
    dbname: str = "eda"
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(12))
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    root: Path | None = field(default=None, init=False)
    bindir: Path = field(default=Path("/nonexistent"), init=False)

    @property
    def datadir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def conninfo(self, dbname: str | None = None) -> str:
        """A libpq connection string (with the password: keep it out of logs)."""
        return (
            f"host={self.host} port={self.port} dbname={dbname or self.dbname} "
            f"user={self.user} password={self.password} connect_timeout=5"
        )

    def drools_vars(self) -> dict[str, object]:
        """The ``drools_db_*`` variables ansible-rulebook takes for this database."""
        return {
            "drools_db_host": self.host,
            "drools_db_port": self.port,
            "drools_db_name": self.dbname,
            "drools_db_user": self.user,
            "drools_db_password": self.password,
        }

    # --- running server commands as the unprivileged owner --------------------------------

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        return [
            "setpriv",
            f"--reuid={UNPRIVILEGED_USER}",
            f"--regid={pwd.getpwnam(UNPRIVILEGED_USER).pw_gid}",
            "--clear-groups",
            "--",
            *cmd,
        ]

    def _run(self, cmd: list[str], timeout: float = START_TIMEOUT_S) -> None:
        proc = subprocess.run(
            self._as_owner(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if proc.returncode != 0:
            raise PostgresError(
                f"{Path(cmd[0]).name} failed ({proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()[-2000:]}"
            )

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        bindir = server_bin_dir()
        if bindir is None:
            raise PostgresError("no PostgreSQL server under /usr/lib/postgresql (make setup)")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="winasync-pg-"))
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            owner = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        os.chmod(pwfile, 0o600)
        os.chmod(self.root, 0o700)
        try:
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                    "--no-sync",
                ],
                timeout=120,
            )
            pwfile.unlink()
            self.resume()
            self._create_database()
        except BaseException:
            self.stop()
            raise
        log.info("PostgreSQL on %s:%d (data in %s)", self.host, self.port, self.datadir)
        return self

    def resume(self) -> None:
        """Start the server (again) on the same port and data."""
        options = (
            f"-p {self.port} -h {self.host} -k '' -c fsync=off -c full_page_writes=off "
            "-c max_connections=100"
        )
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ]
        )

    def pause(self) -> None:
        """Stop the server at once (``-m immediate``: no goodbye to the clients), data kept."""
        self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"]
        )

    @property
    def running(self) -> bool:
        return self.root is not None and (self.datadir / "postmaster.pid").exists()

    def _create_database(self) -> None:
        self.create_database(self.dbname)

    def create_database(self, name: str) -> str:
        """A new empty database on this server; returns its name."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def stop(self) -> None:
        if self.root is None:
            return
        if self.running:
            with contextlib.suppress(PostgresError, subprocess.TimeoutExpired):
                self.pause()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
