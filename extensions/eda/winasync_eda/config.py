"""The arguments of the ``winasync.eda.async_jobs`` source, checked once, at start.

A bad argument stops the source with a :class:`ConfigError`: one line naming the argument
(``hosts[2].auth``, ``inventory host 'win01': ansible_port``, ``interval``, ...), never a
secret's value. The names and meanings are public: ``docs/contract.md``.

Three modules share the work: ``checks.py`` checks single values, ``hosts.py`` builds one
:class:`~winasync_eda.settings.HostSettings` per host (from ``hosts`` items, the inventory and
the source-level defaults), and this one checks the rest and puts it together.

Adding a source argument touches:

1. a field of :class:`SourceConfig` below, with its default and its check (``metadata``);
2. where it is used (``source.py`` hands the config to the parts that need it);
3. the plugin's ``DOCUMENTATION`` (a unit test keeps its names and defaults equal to these);
4. the README's table of arguments.

A per-host setting (also a source-level default for every host) touches instead: a field of
``HostSettings`` with its default and rules (``settings.py``), its check in
``hosts.HOST_CHECKS``, the ansible variables that give it in ``inventory.py``, the transport
that uses it, and the same two documents.
"""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import checks
from .checkpoint_pg import DbTarget, checkpoint_id, db_target, rulebook_persistence_id
from .checks import SOURCE_NAME, ConfigError, error
from .hosts import HOST_ARGUMENTS, build_hosts
from .model import DEFAULT_EMIT, Status
from .secret import Secret, mask
from .settings import HostSettings

__all__ = ["ARGUMENTS", "SOURCE_NAME", "ConfigError", "SourceConfig", "parse_args"]

# ansible-rulebook adds eda_feedback_queue; leave room for its other eda_* keys.
_INJECTED_PREFIX = "eda_"
# shorter passwords are not masked in messages: they would mask ordinary words
_MIN_MASKED = 4


@dataclass(frozen=True)
class SourceConfig:
    """Every argument of the source, checked. The cheap ones are checked first, in this order;
    the hosts last (an inventory may take seconds to read)."""

    hosts: tuple[HostSettings, ...]
    jids: frozenset[str] | None = field(default=None, metadata={"check": checks.jids})
    interval: float = field(default=15.0, metadata={"check": checks.seconds})
    jitter: float = field(default=0.1, metadata={"check": checks.fraction})
    emit: frozenset[Status] = field(default=DEFAULT_EMIT, metadata={"check": checks.emit})
    state_file: Path | None = field(default=None, metadata={"check": checks.state_file})
    checkpoint_db: DbTarget | None = field(default=None, metadata={"check": db_target})
    checkpoint_id: str | None = field(default=None, metadata={"check": checkpoint_id})
    redeliver_after: float | None = field(default=None, metadata={"check": checks.seconds})
    lost_after: float | None = field(default=None, metadata={"check": checks.seconds})
    max_output_bytes: int = field(default=65536, metadata={"check": checks.at_least(256)})
    host_events: bool = field(default=False, metadata={"check": checks.boolean})
    feedback: bool = field(default=False, metadata={"check": checks.boolean})
    max_concurrency: int = field(default=32, metadata={"check": checks.at_least(1)})
    poll_timeout: float = field(default=60.0, metadata={"check": checks.seconds})
    backoff_max: float = field(default=300.0, metadata={"check": checks.seconds})
    auth_backoff: float = field(default=900.0, metadata={"check": checks.seconds_or_zero})
    # not an argument: ansible-rulebook's queue for feedback
    feedback_queue: asyncio.Queue[Any] | None = None


_CHECKED = tuple(f for f in fields(SourceConfig) if "check" in f.metadata)
# every argument the source accepts
ARGUMENTS: tuple[str, ...] = (
    "hosts",
    "inventory",
    "limit",
    *(f.name for f in _CHECKED),
    *HOST_ARGUMENTS,
)


def parse_args(args: Mapping[str, Any]) -> SourceConfig:
    """Check the source's arguments; raise ConfigError for the first bad one."""
    secrets = _given_passwords(args)
    try:
        return _parse(args, secrets)
    except ConfigError as exc:
        # Messages never take a password in; this is the safety net should one slip in.
        text = mask(str(exc), secrets, min_length=_MIN_MASKED)
        if text != str(exc):
            raise ConfigError(text) from None
        raise


def _given_passwords(args: Any) -> list[str]:
    """The passwords in the arguments, found before any check so every message is scrubbed."""
    if not isinstance(args, Mapping):
        return []
    candidates = [args.get("password")]
    hosts = args.get("hosts")
    if isinstance(hosts, Sequence) and not isinstance(hosts, str | bytes):
        candidates += [item.get("password") for item in hosts if isinstance(item, Mapping)]
    db = args.get("checkpoint_db")
    if isinstance(db, Mapping):
        candidates += [db.get("password"), db.get("sslpassword")]
    elif isinstance(db, str):
        candidates += re.findall(r"(?:password=|://[^:/@\s]*:)([^\s@]+)", db)
    found = []
    for candidate in candidates:
        if isinstance(candidate, Secret):
            candidate = candidate.reveal()
        if isinstance(candidate, str) and candidate:
            found.append(candidate)
    return found


def _parse(args: Mapping[str, Any], secrets: list[str]) -> SourceConfig:
    if not isinstance(args, Mapping):
        raise ConfigError(f"{SOURCE_NAME}: arguments must be a mapping")
    known = frozenset(ARGUMENTS)
    for key in args:
        if not isinstance(key, str) or (key not in known and not key.startswith(_INJECTED_PREFIX)):
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(str(key), f"unknown argument{hint}")

    values: dict[str, Any] = {}
    for spec in _CHECKED:
        raw = args.get(spec.name)
        values[spec.name] = spec.default if raw is None else spec.metadata["check"](raw, spec.name)
    if values["checkpoint_db"] is not None:
        if values["state_file"] is not None:
            raise error("checkpoint_db", "and state_file are both set: keep the checkpoint in one")
        if values["checkpoint_id"] is None:
            found = rulebook_persistence_id()
            if found is None:
                raise error(
                    "checkpoint_db",
                    "needs checkpoint_id, or ansible-rulebook's --persistence-id, to name its table",
                )
            values["checkpoint_id"] = checkpoint_id(found, "--persistence-id")
    if not values["emit"] and not values["host_events"]:
        raise error("emit", "is empty and host_events is off: nothing would be emitted")
    if values["feedback"]:
        queue = args.get("eda_feedback_queue")
        if not isinstance(queue, asyncio.Queue):
            raise error(
                "feedback",
                "is true but ansible-rulebook gave no feedback queue: run ansible-rulebook with "
                "--persistence-id (feedback needs persistence), or set feedback: false",
            )
        values["feedback_queue"] = queue
    return SourceConfig(hosts=build_hosts(args, secrets), **values)
