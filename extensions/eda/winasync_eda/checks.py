"""Argument checks: each takes a raw value and where it came from, and returns the checked value.

A bad value raises :class:`ConfigError`, one line naming where it came from (``interval``,
``hosts[2].auth``, ``inventory host 'win01': ansible_port``) and what is wrong, never a secret's
value. Values come from YAML, JSON or an inventory, so numbers and booleans may be strings.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from .inventory import connection_plugin
from .model import Status, is_job_name
from .secret import Secret

SOURCE_NAME = "async_jobs"
# ansible's booleans
TRUE = frozenset({"y", "yes", "on", "1", "true", "t"})
FALSE = frozenset({"n", "no", "off", "0", "false", "f"})


class ConfigError(ValueError):
    """A bad source argument; ``str(e)`` is one line naming it, without any secret value."""


def error(where: str, problem: str) -> ConfigError:
    return ConfigError(f"{SOURCE_NAME}: {where}: {problem}")


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- scalar checks: (raw value, where) -> value -------------------------------------------


def number(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise error(where, f"must be a number, got {show(raw)}")
    try:
        value = float(raw)
    except ValueError:
        raise error(where, f"must be a number, got {show(raw)}") from None
    if not math.isfinite(value):
        raise error(where, f"must be a finite number, got {show(raw)}")
    return value


def seconds(raw: Any, where: str, *, zero_ok: bool = False) -> float:
    value = number(raw, where)
    if value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise error(where, f"must be a number of seconds {bound}, got {show(raw)}")
    return value


def integer(raw: Any, where: str, minimum: int, maximum: int | None = None) -> int:
    span = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    problem = f"must be an integer {span}, got {show(raw)}"
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise error(where, problem)
    if isinstance(raw, int):
        value = raw
    else:
        try:
            number = float(raw)
        except ValueError:
            raise error(where, problem) from None
        if not (math.isfinite(number) and number.is_integer()):
            raise error(where, problem)
        value = int(number)
    if value < minimum or (maximum is not None and value > maximum):
        raise error(where, problem)
    return value


def boolean(raw: Any, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in TRUE | FALSE:
        return raw.strip().lower() in TRUE
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise error(where, f"must be true or false, got {show(raw)}")


def text(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise error(where, f"must be a non-empty string, got {show(raw)}")
    return raw.strip()


def choice(options: Sequence[str], what: str) -> Callable[[Any, str], str]:
    def check(raw: Any, where: str) -> str:
        value = raw.strip().lower() if isinstance(raw, str) else raw
        if value not in options:
            expected = ", ".join(options)
            raise error(where, f"unknown {what} {show(raw)} (expected one of: {expected})")
        return cast(str, value)

    return check


def password(raw: Any, where: str) -> Secret | None:
    if isinstance(raw, Secret):
        return raw if raw.reveal() else None
    if not isinstance(raw, str):
        # the value itself is never shown: it is (or is near to) a secret
        raise error(where, f"must be a string, not {type(raw).__name__} (quote it)")
    return Secret(raw) if raw else None


def port(raw: Any, where: str) -> int:
    return integer(raw, where, 1, 65535)


def connection(raw: Any, where: str) -> str:
    """psrp, winrm or local (winrm, ansible's other Windows connection, means psrp here)."""
    value = connection_plugin(raw) if isinstance(raw, str) else None
    if value is None:
        raise error(where, f"unknown connection {show(raw)} (expected one of: psrp, local)")
    return value


def wsman_path(raw: Any, where: str) -> str:
    value = text(raw, where).lstrip("/")
    if not value:
        raise error(where, f"must name the WSMan path, got {show(raw)}")
    return value


def file_path(raw: Any, where: str) -> str:
    return os.path.expanduser(text(raw, where))


def cert_validation(raw: Any, where: str) -> bool | str:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip():
        word = raw.strip().lower()
        if word in ("validate", "ignore"):
            return word == "validate"
        if word in TRUE | FALSE:
            return word in TRUE
        path = os.path.expanduser(raw.strip())
        if not os.path.exists(path):
            raise error(
                where,
                f"CA bundle {raw.strip()!r} does not exist "
                "(expected true, false, validate, ignore or the path of a CA bundle)",
            )
        return path
    raise error(where, f"must be true, false or the path of a CA bundle, got {show(raw)}")


def strings(raw: Any, where: str, what: str) -> list[str]:
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise error(where, f"must be a list of {what}, got {show(raw)}")
    for index, item in enumerate(raw):
        if not isinstance(item, str):
            raise error(f"{where}[{index}]", f"must be a string, got {show(item)}")
    return [item.strip() for item in raw]


def emit(raw: Any, where: str) -> frozenset[Status]:
    known = [status.value for status in Status]
    statuses = set()
    for index, item in enumerate(strings(raw, where, "statuses")):
        if item.lower() not in known:
            raise error(
                f"{where}[{index}]",
                f"unknown status {item!r} (expected one of: {', '.join(known)})",
            )
        statuses.add(Status(item.lower()))
    return frozenset(statuses)


def jids(raw: Any, where: str) -> frozenset[str]:
    jids = strings(raw, where, "job ids")
    for index, jid in enumerate(jids):
        if not is_job_name(jid):
            raise error(
                f"{where}[{index}]",
                f"{jid!r} is not an async job id (like j687253281342.17218)",
            )
    if not jids:
        raise error(where, "is empty: no job would be watched (leave jids out to watch all)")
    return frozenset(jids)


def state_file(raw: Any, where: str) -> Path:
    path = Path(os.path.expanduser(text(raw, where)))
    if path.is_dir():
        raise error(where, f"{str(path)!r} is a directory, not a file")
    return path


def at_least(minimum: int) -> Callable[[Any, str], int]:
    return lambda raw, where: integer(raw, where, minimum)


def seconds_or_zero(raw: Any, where: str) -> float:
    return seconds(raw, where, zero_ok=True)


def fraction(raw: Any, where: str) -> float:
    value = number(raw, where)
    if not 0 <= value < 1:
        raise error(where, f"must be a fraction of interval in [0, 1), got {show(raw)}")
    return value
