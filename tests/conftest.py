"""Fixtures every test folder may use: a throwaway PostgreSQL (``harness.postgres``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.postgres import PostgresCluster, server_bin_dir


def _needs_postgres() -> None:
    if server_bin_dir() is None:
        pytest.skip("needs PostgreSQL server binaries (make setup installs Debian's postgresql)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresCluster]:
    """One cluster for the whole session; tests take a database each (``postgres``)."""
    _needs_postgres()
    with PostgresCluster() as cluster:
        yield cluster


@dataclass
class Database:
    """One fresh database on the session's cluster."""

    cluster: PostgresCluster
    name: str

    def conninfo(self) -> str:
        return self.cluster.conninfo(self.name)

    def drools_vars(self) -> dict[str, object]:
        return {**self.cluster.drools_vars(), "drools_db_name": self.name}

    def params(self) -> dict[str, object]:
        """``checkpoint_db`` as a mapping."""
        return {
            "host": self.cluster.host,
            "port": self.cluster.port,
            "dbname": self.name,
            "user": self.cluster.user,
            "password": self.cluster.password,
        }


@pytest.fixture
def postgres(postgres_server: PostgresCluster) -> Database:
    name = "t_" + uuid.uuid4().hex[:12]
    return Database(postgres_server, postgres_server.create_database(name))


@pytest.fixture
def own_postgres() -> Iterator[Database]:
    """A cluster of the test's own, which it may stop and start (outages)."""
    _needs_postgres()
    with PostgresCluster() as cluster:
        yield Database(cluster, cluster.dbname)
