"""The checkpoint in PostgreSQL, so that an activation restarted on another node (no shared
disk) knows what the one before it delivered.

One table per persistence id (``winasync_checkpoint_<id>``), created when missing; one row per
delivered (host, jid, status). A second one (``winasync_shells_<id>``) holds each host's open
shells, one row per (host, shell id), so the next start can delete what a killed one left. Each flush is one transaction (deletes of jobs whose file is
gone, then upserts), so a crash at any moment leaves the previous or the next state, never a
mix. While the database is unreachable a flush waits and retries (tenacity, backoff up to
``RETRY_MAX_S``) and nothing is dropped: the outcomes stay in memory, and the source emits
nothing new meanwhile. At start, an unreachable database stops the source with one line.

The target is a libpq connection string (``host=... dbname=...`` or ``postgresql://...``) or
a mapping with the keys of ansible-rulebook's ``drools_db_*`` variables (``host``, ``port``,
``dbname``, ``user``, ``password``, ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``,
``sslpassword``). The password is a :class:`~winasync_eda.secret.Secret` and is masked out of
every message. psycopg is imported only when the store is used.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, retry_if_exception, wait_exponential, wait_random

from .checkpoint import CheckpointError
from .checks import error
from .secret import Secret, mask

if TYPE_CHECKING:
    import psycopg

    from .checkpoint import Changes, Delivered, Shells

LOGGER = logging.getLogger(__name__)
TABLE_PREFIX = "winasync_checkpoint_"
SHELLS_TABLE_PREFIX = "winasync_shells_"
CHECKPOINT_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
DB_KEYS = frozenset(
    {"host", "port", "dbname", "user", "password"}
    | {"sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"}
)
_SECRET_KEYS = frozenset({"password", "sslpassword"})
CONNECT_TIMEOUT_S = 10
RETRY_MAX_S = 10.0


class CheckpointDbError(CheckpointError):
    """The checkpoint database cannot be used at start; one line, no secret."""


@dataclass(frozen=True)
class DbTarget:
    """Where the checkpoint lives: libpq parameters, the secret ones wrapped."""

    params: tuple[tuple[str, str | Secret], ...]

    @property
    def secrets(self) -> list[str]:
        return [v.reveal() for _, v in self.params if isinstance(v, Secret) and v.reveal()]

    def describe(self) -> str:
        """``host:port/dbname``, for messages."""
        p = dict(self.params)
        return f"{p.get('host', 'localhost')}:{p.get('port', 5432)}/{p.get('dbname', '')}"

    def connect_kwargs(self) -> dict[str, str]:
        kwargs = {k: v.reveal() if isinstance(v, Secret) else v for k, v in self.params}
        kwargs.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
        kwargs.setdefault("application_name", "winasync.eda async_jobs")
        return kwargs


def db_target(raw: Any, where: str) -> DbTarget | None:
    """Check ``checkpoint_db``: a connection string, or a mapping of drools_db_* style keys.

    A mapping whose every value is empty is "not given": a rulebook may template it from
    ``drools_db_*`` variables that only some activations have.
    """
    if isinstance(raw, str):
        from psycopg.conninfo import conninfo_to_dict

        try:
            parsed = conninfo_to_dict(raw)
        except Exception:  # psycopg.ProgrammingError; its text may quote the string
            raise error(where, "is not a valid PostgreSQL connection string") from None
        items: Mapping[Any, Any] = {k: v for k, v in parsed.items() if v is not None}
    elif isinstance(raw, Mapping):
        items = {k: v for k, v in raw.items() if v not in (None, "")}
        if not items:
            return None
        for key in items:
            if key not in DB_KEYS:
                raise error(
                    f"{where}.{key}", f"unknown key (expected one of: {', '.join(sorted(DB_KEYS))})"
                )
        if "host" not in items:
            raise error(where, "needs a host")
    else:
        raise error(where, "must be a connection string or a mapping (host, port, dbname, ...)")
    params: list[tuple[str, str | Secret]] = []
    for key, value in items.items():
        value = value.reveal() if isinstance(value, Secret) else value
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise error(f"{where}.{key}", "must be a string")
        text = str(value)
        params.append((str(key), Secret(text) if key in _SECRET_KEYS else text))
    port = dict(params).get("port")
    if isinstance(port, str) and not (port.isdigit() and 0 < int(port) < 65536):
        raise error(f"{where}.port", f"{port!r} is not a port number")
    return DbTarget(tuple(params))


def checkpoint_id(raw: Any, where: str) -> str:
    text = str(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else None
    if text is None or not CHECKPOINT_ID.match(text):
        raise error(where, "must be 1-40 characters of letters, digits, '_' and '-'")
    return text


def rulebook_persistence_id() -> str | None:
    """ansible-rulebook's ``--persistence-id`` when the source runs inside ansible-rulebook
    (it hands a source only its arguments; the id is in its settings)."""
    conf = sys.modules.get("ansible_rulebook.conf")
    value = getattr(getattr(conf, "settings", None), "persistence_id", None)
    return None if value in (None, "") else str(value)


def _is_connection_problem(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class PostgresStore:
    """Load and save the delivered outcomes of one persistence id."""

    def __init__(self, target: DbTarget, ident: str, retry_max_s: float = RETRY_MAX_S) -> None:
        self.target = target
        self.ident = ident
        self.table = TABLE_PREFIX + ident
        self.shells_table = SHELLS_TABLE_PREFIX + ident
        self.retry_max_s = retry_max_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._loaded_shells: Shells = {}

    def _text(self, exc: BaseException) -> str:
        """The first line of a driver error, secrets masked."""
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        return mask(lines[0], self.target.secrets)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        import psycopg
        from psycopg.conninfo import make_conninfo

        if self._conn is None or self._conn.closed:
            conninfo = make_conninfo("", **self.target.connect_kwargs())
            self._conn = await psycopg.AsyncConnection.connect(conninfo)
        return self._conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except Exception:  # already broken
                LOGGER.debug("closing a broken checkpoint connection failed", exc_info=True)

    async def load(self) -> Delivered:
        from psycopg import sql

        try:
            conn = await self._connection()
            async with conn.transaction():
                # two nodes starting at once must not both create the table
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (host text NOT NULL, jid text NOT NULL,"
                        " status text NOT NULL, delivered_at bigint NOT NULL,"
                        " PRIMARY KEY (host, jid, status))"
                    ).format(sql.Identifier(self.table))
                )
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (host text NOT NULL,"
                        " shell_id text NOT NULL, PRIMARY KEY (host, shell_id))"
                    ).format(sql.Identifier(self.shells_table))
                )
                cur = await conn.execute(
                    sql.SQL("SELECT host, jid, status, delivered_at FROM {}").format(
                        sql.Identifier(self.table)
                    )
                )
                rows = await cur.fetchall()
                cur = await conn.execute(
                    sql.SQL("SELECT host, shell_id FROM {}").format(
                        sql.Identifier(self.shells_table)
                    )
                )
                shell_rows = await cur.fetchall()
        except Exception as exc:
            await self._drop_connection()
            raise CheckpointDbError(
                f"checkpoint_db: cannot use PostgreSQL at {self.target.describe()}: {self._text(exc)}"
            ) from None
        shells: dict[str, set[str]] = {}
        for host, shell_id in shell_rows:
            shells.setdefault(host, set()).add(shell_id)
        self._loaded_shells = {host: frozenset(ids) for host, ids in shells.items()}
        delivered: Delivered = {}
        for host, jid, status, at in rows:
            delivered.setdefault(host, {}).setdefault(jid, {})[status] = int(at)
        LOGGER.info(
            "checkpoint table %s at %s: %d delivered outcomes",
            self.table,
            self.target.describe(),
            len(rows),
        )
        return delivered

    async def load_shells(self) -> Shells:
        """The shells the last run recorded (read by ``load``, in its transaction)."""
        return self._loaded_shells

    async def save(self, changes: Changes) -> None:
        """Apply ``changes`` in one transaction; wait and retry while the database is away."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_connection_problem),
            wait=wait_exponential(multiplier=0.5, max=self.retry_max_s) + wait_random(0, 0.5),
            before_sleep=self._log_retry,
            reraise=True,
        ):
            with attempt:
                try:
                    await self._save_once(changes)
                except Exception:
                    await self._drop_connection()
                    raise

    def _log_retry(self, state: Any) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        LOGGER.warning(
            "checkpoint database %s unreachable (%s): retry %d in %.1f s; nothing is lost, "
            "new events wait",
            self.target.describe(),
            self._text(exc) if exc is not None else "?",
            state.attempt_number,
            state.upcoming_sleep,
        )

    async def _save_once(self, changes: Changes) -> None:
        from psycopg import sql

        table = sql.Identifier(self.table)
        conn = await self._connection()
        async with conn.transaction(), conn.cursor() as cur:
            if changes.removed:
                await cur.executemany(
                    sql.SQL("DELETE FROM {} WHERE host = %s AND jid = %s").format(table),
                    sorted(changes.removed),
                )
            if changes.upserts:
                await cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} (host, jid, status, delivered_at) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (host, jid, status)"
                        " DO UPDATE SET delivered_at = EXCLUDED.delivered_at"
                    ).format(table),
                    [(*key, at) for key, at in sorted(changes.upserts.items())],
                )
            if changes.shells:
                shells = sql.Identifier(self.shells_table)
                await cur.executemany(
                    sql.SQL("DELETE FROM {} WHERE host = %s").format(shells),
                    [(host,) for host in sorted(changes.shells)],
                )
                rows = [(h, i) for h, ids in sorted(changes.shells.items()) for i in sorted(ids)]
                if rows:
                    await cur.executemany(
                        sql.SQL("INSERT INTO {} (host, shell_id) VALUES (%s, %s)").format(shells),
                        rows,
                    )

    async def close(self) -> None:
        await self._drop_connection()
