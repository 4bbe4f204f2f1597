"""The arguments of the ``winasync.eda.async_jobs`` source, checked once, at start.

A bad argument stops the source with a :class:`ConfigError`: one line naming the argument
(``hosts[2].auth``, ``inventory host 'win01': ansible_port``, ``interval``, ...), never a
secret's value.

Where a host's connection setting comes from, first found wins:

1. the host itself: a key of its ``hosts`` item, or its inventory variables (host_vars,
   group_vars, the inventory file; templated by ansible, so lookups and vault work);
2. the source-level argument of the same name (``username``, ``password``, ``auth``,
   ``protocol``, ``port``, ``cert_validation``, ``async_dir``, ``connection``, ``path``, the
   timeouts, the certificate paths): a default for every host, which only fills what the host
   leaves unset;
3. the built-in default, which is ansible's psrp one: https on 5986, or http when the port
   alone is 5985; negotiate auth; certificate validation; path ``wsman``.

Basic auth over plain http sends the password in the clear: it is allowed (encryption
``never``) only when both ``protocol: http`` and ``auth: basic`` were asked for (at any level,
or with ansible's ``ansible_psrp_message_encryption: never`` / winrm ``plaintext``), not when
http is only inferred from port 5985.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from winasync_eda.inventory import InventoryError, connection_plugin, load_hosts
from winasync_eda.model import DEFAULT_EMIT, Status, is_job_name
from winasync_eda.secret import Secret

SOURCE_NAME = "async_jobs"
AUTHS = ("basic", "certificate", "credssp", "kerberos", "negotiate", "ntlm")
PSRP_ASYNC_DIR = "%USERPROFILE%\\.ansible_async"
LOCAL_ASYNC_DIR = "~/.ansible_async"

_NEEDS_PASSWORD = frozenset({"basic", "credssp", "negotiate", "ntlm"})
_TRUE = frozenset({"y", "yes", "on", "1", "true", "t"})
_FALSE = frozenset({"n", "no", "off", "0", "false", "f"})

# Per-host settings that may also be given at the source level, as defaults for every host.
_HOST_DEFAULTS = (
    "username",
    "password",
    "auth",
    "protocol",
    "port",
    "cert_validation",
    "async_dir",
    "connection",
    "path",
    "connection_timeout",
    "read_timeout",
    "operation_timeout",
    "certificate_pem",
    "certificate_key_pem",
    "negotiate_hostname_override",
)
_HOST_KEYS = ("name", "address", *_HOST_DEFAULTS)
_SOURCE_KEYS = (
    "hosts",
    "inventory",
    "limit",
    "jids",
    "interval",
    "jitter",
    "emit",
    "state_file",
    "redeliver_after",
    "lost_after",
    "max_output_bytes",
    "host_events",
    "feedback",
    "max_concurrency",
    "poll_timeout",
    "backoff_max",
    "auth_backoff",
)
_KNOWN = frozenset(_SOURCE_KEYS + _HOST_DEFAULTS)
# ansible-rulebook adds eda_feedback_queue; leave room for its other eda_* keys.
_INJECTED_PREFIX = "eda_"


class ConfigError(ValueError):
    """A bad source argument; ``str(e)`` is one line naming it, without any secret value."""


@dataclass(frozen=True)
class HostConfig:
    """One host to watch, with every setting resolved."""

    name: str
    connection: Literal["psrp", "local"]
    async_dir: str
    address: str
    port: int | None
    protocol: Literal["https", "http"]
    username: str | None
    password: Secret | None
    auth: str
    cert_validation: bool | str
    encryption: Literal["auto", "never"]
    path: str
    connection_timeout: float
    read_timeout: float
    operation_timeout: float
    certificate_pem: str | None
    certificate_key_pem: str | None
    # the host name in the Kerberos SPN (HTTP/<name>) when the address is not that name
    negotiate_hostname_override: str | None = None


@dataclass(frozen=True)
class SourceConfig:
    """Every argument of the source, checked."""

    hosts: tuple[HostConfig, ...]
    jids: frozenset[str] | None
    interval: float
    jitter: float
    emit: frozenset[Status]
    state_file: Path | None
    redeliver_after: float | None
    lost_after: float | None
    max_output_bytes: int
    host_events: bool
    feedback: bool
    feedback_queue: asyncio.Queue[Any] | None
    max_concurrency: int
    poll_timeout: float
    backoff_max: float
    auth_backoff: float


def parse_args(args: Mapping[str, Any]) -> SourceConfig:
    """Check the source's arguments; raise ConfigError for the first bad one."""
    secrets = _given_passwords(args)
    try:
        return _parse(args, secrets)
    except ConfigError as exc:
        # Messages never take a password in; this is the safety net should one slip in.
        text = str(exc)
        for secret in secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "********")
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
    found = []
    for candidate in candidates:
        if isinstance(candidate, Secret):
            candidate = candidate.reveal()
        if isinstance(candidate, str) and candidate:
            found.append(candidate)
    return found


def _error(where: str, problem: str) -> ConfigError:
    return ConfigError(f"{SOURCE_NAME}: {where}: {problem}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- scalar checks: (raw value, where) -> value -------------------------------------------


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise _error(where, f"must be a number, got {_show(raw)}")
    try:
        value = float(raw)
    except ValueError:
        raise _error(where, f"must be a number, got {_show(raw)}") from None
    if not math.isfinite(value):
        raise _error(where, f"must be a finite number, got {_show(raw)}")
    return value


def _seconds(raw: Any, where: str, *, zero_ok: bool = False) -> float:
    value = _number(raw, where)
    if value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise _error(where, f"must be a number of seconds {bound}, got {_show(raw)}")
    return value


def _integer(raw: Any, where: str, minimum: int, maximum: int | None = None) -> int:
    span = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    problem = f"must be an integer {span}, got {_show(raw)}"
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise _error(where, problem)
    if isinstance(raw, int):
        value = raw
    else:
        try:
            number = float(raw)
        except ValueError:
            raise _error(where, problem) from None
        if not (math.isfinite(number) and number.is_integer()):
            raise _error(where, problem)
        value = int(number)
    if value < minimum or (maximum is not None and value > maximum):
        raise _error(where, problem)
    return value


def _boolean(raw: Any, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise _error(where, f"must be true or false, got {_show(raw)}")


def _text(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _error(where, f"must be a non-empty string, got {_show(raw)}")
    return raw.strip()


def _choice(options: Sequence[str], what: str) -> Callable[[Any, str], str]:
    def check(raw: Any, where: str) -> str:
        value = raw.strip().lower() if isinstance(raw, str) else raw
        if value not in options:
            expected = ", ".join(options)
            raise _error(where, f"unknown {what} {_show(raw)} (expected one of: {expected})")
        return cast(str, value)

    return check


def _password(raw: Any, where: str) -> Secret | None:
    if isinstance(raw, Secret):
        return raw if raw.reveal() else None
    if not isinstance(raw, str):
        # the value itself is never shown: it is (or is near to) a secret
        raise _error(where, f"must be a string, not {type(raw).__name__} (quote it)")
    return Secret(raw) if raw else None


def _port(raw: Any, where: str) -> int:
    return _integer(raw, where, 1, 65535)


def _connection(raw: Any, where: str) -> str:
    """psrp, winrm or local (winrm, ansible's other Windows connection, means psrp here)."""
    value = connection_plugin(raw) if isinstance(raw, str) else None
    if value is None:
        raise _error(where, f"unknown connection {_show(raw)} (expected one of: psrp, local)")
    return value


def _wsman_path(raw: Any, where: str) -> str:
    value = _text(raw, where).lstrip("/")
    if not value:
        raise _error(where, f"must name the WSMan path, got {_show(raw)}")
    return value


def _file_path(raw: Any, where: str) -> str:
    return os.path.expanduser(_text(raw, where))


def _cert_validation(raw: Any, where: str) -> bool | str:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip():
        word = raw.strip().lower()
        if word in ("validate", "ignore"):
            return word == "validate"
        if word in _TRUE | _FALSE:
            return word in _TRUE
        path = os.path.expanduser(raw.strip())
        if not os.path.exists(path):
            raise _error(
                where,
                f"CA bundle {raw.strip()!r} does not exist "
                "(expected true, false, validate, ignore or the path of a CA bundle)",
            )
        return path
    raise _error(where, f"must be true, false or the path of a CA bundle, got {_show(raw)}")


_HOST_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "address": _text,
    "port": _port,
    "protocol": _choice(("https", "http"), "protocol"),
    "username": _text,
    "password": _password,
    "auth": _choice(AUTHS, "auth"),
    "cert_validation": _cert_validation,
    "async_dir": _text,
    "connection": _connection,
    "path": _wsman_path,
    "connection_timeout": _seconds,
    "read_timeout": _seconds,
    "operation_timeout": _seconds,
    "certificate_pem": _file_path,
    "certificate_key_pem": _file_path,
    "negotiate_hostname_override": _text,
    "message_encryption": _choice(("auto", "always", "never"), "message encryption"),
}

# A layer of host settings: key -> (checked value, the argument it came from).
_Layer = dict[str, tuple[Any, str]]


def _host_layer(
    items: Mapping[str, Any], where: Callable[[str], str], secrets: list[str]
) -> _Layer:
    layer: _Layer = {}
    for key, raw in items.items():
        if raw is None or raw == "":
            continue  # unset: a lower layer or the default fills it
        value = _HOST_CHECKS[key](raw, where(key))
        if isinstance(value, Secret):
            secrets.append(value.reveal())
        if value is not None:
            layer[key] = (value, where(key))
    return layer


# --- hosts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HostOrigin:
    label: str  # "hosts[2] ('win01')" or "inventory host 'win01'"
    username_hint: str  # where a missing username can be set
    password_hint: str  # where a missing password can be set


def _build_host(name: str, merged: _Layer, origin: _HostOrigin) -> HostConfig:
    def get(key: str, default: Any = None) -> Any:
        return merged[key][0] if key in merged else default

    connection: Literal["psrp", "local"] = "local" if get("connection") == "local" else "psrp"
    port = get("port")
    protocol = get("protocol")
    if protocol is None:  # ansible's psrp rule
        protocol = "http" if port == 5985 else "https"
    auth = get("auth", "negotiate")
    username = get("username")
    password = get("password")
    read_timeout = get("read_timeout", 30.0)
    operation_timeout = get("operation_timeout", 20.0)
    encryption: Literal["auto", "never"] = "auto"

    if connection == "psrp":
        if protocol == "http" and auth == "basic":
            asked = "protocol" in merged or get("message_encryption") == "never"
            if not asked:
                raise _error(
                    origin.label,
                    "basic auth over http (inferred from port 5985) would send the password "
                    "unencrypted; set protocol: http explicitly to allow it, or use https",
                )
            encryption = "never"
        if auth == "certificate":
            _check_certificate(get, protocol, origin)
        if auth in _NEEDS_PASSWORD:
            if username is None:
                raise _error(
                    origin.label, f"auth {auth!r} needs a username ({origin.username_hint})"
                )
            if password is None:
                raise _error(
                    origin.label, f"auth {auth!r} needs a password ({origin.password_hint})"
                )
        if read_timeout <= operation_timeout:
            where = merged["read_timeout"][1] if "read_timeout" in merged else origin.label
            raise _error(
                where,
                f"read_timeout ({read_timeout:g}) must be greater than "
                f"operation_timeout ({operation_timeout:g})",
            )

    default_dir = LOCAL_ASYNC_DIR if connection == "local" else PSRP_ASYNC_DIR
    return HostConfig(
        name=name,
        connection=connection,
        async_dir=get("async_dir", default_dir),
        address=get("address", name),
        port=port,
        protocol=protocol,
        username=username,
        password=password,
        auth=auth,
        cert_validation=get("cert_validation", True),
        encryption=encryption,
        path=get("path", "wsman"),
        connection_timeout=get("connection_timeout", 30.0),
        read_timeout=read_timeout,
        operation_timeout=operation_timeout,
        certificate_pem=get("certificate_pem"),
        certificate_key_pem=get("certificate_key_pem"),
        negotiate_hostname_override=get("negotiate_hostname_override"),
    )


def _check_certificate(get: Callable[..., Any], protocol: str, origin: _HostOrigin) -> None:
    if protocol != "https":
        raise _error(origin.label, "auth 'certificate' needs protocol https")
    for key in ("certificate_pem", "certificate_key_pem"):
        path = get(key)
        if path is None:
            raise _error(origin.label, f"auth 'certificate' needs {key}")
        if not os.path.isfile(path):
            raise _error(origin.label, f"{key} {path!r} does not exist")


def _host_items(raw: Any) -> list[tuple[int, Mapping[str, Any]]]:
    if raw is None:
        return []
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise _error("hosts", f"must be a list of hosts, got {type(raw).__name__}")
    items: list[tuple[int, Mapping[str, Any]]] = []
    for index, item in enumerate(raw):
        where = f"hosts[{index}]"
        if isinstance(item, str):
            items.append((index, {"name": item}))
            continue
        if not isinstance(item, Mapping):
            raise _error(
                where, f"must be a host name or a mapping with name, got {type(item).__name__}"
            )
        for key in item:
            if key not in _HOST_KEYS:
                expected = ", ".join(_HOST_KEYS)
                raise _error(where, f"unknown key {str(key)!r} (expected one of: {expected})")
        if "name" not in item:
            raise _error(where, "needs a name")
        items.append((index, item))
    return items


def _item_arg(prefix: str) -> Callable[[str], str]:
    return lambda key: f"{prefix}.{key}"


def _sources(raw: Any) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if (
        not isinstance(raw, Sequence)
        or not raw
        or not all(isinstance(s, str) and s.strip() for s in raw)
    ):
        raise _error("inventory", f"must be the path of an Ansible inventory, got {_show(raw)}")
    return [s.strip() for s in raw]


def _hosts(args: Mapping[str, Any], secrets: list[str]) -> tuple[HostConfig, ...]:
    defaults = _host_layer({k: args[k] for k in _HOST_DEFAULTS if k in args}, str, secrets)
    hosts: list[HostConfig] = []
    seen: dict[str, str] = {}

    def add(host: HostConfig, label: str) -> None:
        if host.name in seen:
            raise _error(label, f"duplicate host name {host.name!r} (also {seen[host.name]})")
        seen[host.name] = label
        hosts.append(host)

    for index, item in _host_items(args.get("hosts")):
        prefix = f"hosts[{index}]"
        name = _text(item["name"], f"{prefix}.name")
        own = _host_layer(
            {k: v for k, v in item.items() if k != "name"}, _item_arg(prefix), secrets
        )
        origin = _HostOrigin(
            f"{prefix} ({name!r})",
            f"set {prefix}.username or username",
            f"set {prefix}.password or password",
        )
        add(_build_host(name, {**defaults, **own}, origin), prefix)

    if "inventory" in args and args["inventory"] is not None:
        for host in _inventory_hosts(args, defaults, secrets):
            add(host, f"inventory host {host.name!r}")
    elif args.get("limit") is not None:
        raise _error("limit", "needs inventory (limit selects inventory hosts)")

    if not hosts:
        raise _error("hosts", "no host to watch: give hosts and/or inventory")
    return tuple(hosts)


def _inventory_hosts(
    args: Mapping[str, Any], defaults: _Layer, secrets: list[str]
) -> list[HostConfig]:
    limit = args.get("limit")
    if limit is not None and (not isinstance(limit, str) or not limit.strip()):
        raise _error("limit", f"must be a host pattern, got {_show(limit)}")
    default_connection = defaults["connection"][0] if "connection" in defaults else "psrp"
    try:
        found = load_hosts(_sources(args["inventory"]), limit, default_connection)
    except InventoryError as exc:
        raise _error(exc.where, str(exc)) from None

    hosts = []
    for entry in found:
        label = f"inventory host {entry.name!r}"
        raw = {key: setting.value for key, setting in entry.settings.items()}
        names = {key: f"{label}: {setting.var}" for key, setting in entry.settings.items()}
        own = _host_layer(raw, names.__getitem__, secrets)
        origin = _HostOrigin(
            label,
            "set ansible_user in the inventory or username",
            "set ansible_password in the inventory or password",
        )
        hosts.append(_build_host(entry.name, {**defaults, **own}, origin))
    return hosts


# --- the rest ----------------------------------------------------------------------------


def _optional(
    args: Mapping[str, Any], key: str, check: Callable[[Any, str], Any], default: Any
) -> Any:
    raw = args.get(key)
    return default if raw is None else check(raw, key)


def _strings(raw: Any, where: str, what: str) -> list[str]:
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise _error(where, f"must be a list of {what}, got {_show(raw)}")
    for index, item in enumerate(raw):
        if not isinstance(item, str):
            raise _error(f"{where}[{index}]", f"must be a string, got {_show(item)}")
    return [item.strip() for item in raw]


def _emit(raw: Any, where: str) -> frozenset[Status]:
    known = [status.value for status in Status]
    statuses = set()
    for index, item in enumerate(_strings(raw, where, "statuses")):
        if item.lower() not in known:
            raise _error(
                f"{where}[{index}]",
                f"unknown status {item!r} (expected one of: {', '.join(known)})",
            )
        statuses.add(Status(item.lower()))
    return frozenset(statuses)


def _jids(raw: Any, where: str) -> frozenset[str]:
    jids = _strings(raw, where, "job ids")
    for index, jid in enumerate(jids):
        if not is_job_name(jid):
            raise _error(
                f"{where}[{index}]",
                f"{jid!r} is not an async job id (like j687253281342.17218)",
            )
    if not jids:
        raise _error(where, "is empty: no job would be watched (leave jids out to watch all)")
    return frozenset(jids)


def _state_file(raw: Any, where: str) -> Path:
    path = Path(os.path.expanduser(_text(raw, where)))
    if path.is_dir():
        raise _error(where, f"{str(path)!r} is a directory, not a file")
    return path


def _at_least(minimum: int) -> Callable[[Any, str], int]:
    return lambda raw, where: _integer(raw, where, minimum)


def _seconds_or_zero(raw: Any, where: str) -> float:
    return _seconds(raw, where, zero_ok=True)


def _parse(args: Mapping[str, Any], secrets: list[str]) -> SourceConfig:
    if not isinstance(args, Mapping):
        raise ConfigError(f"{SOURCE_NAME}: arguments must be a mapping")
    for key in args:
        if not isinstance(key, str) or (key not in _KNOWN and not key.startswith(_INJECTED_PREFIX)):
            close = difflib.get_close_matches(str(key), sorted(_KNOWN), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _error(str(key), f"unknown argument{hint}")

    host_events = _optional(args, "host_events", _boolean, False)
    emit = _optional(args, "emit", _emit, DEFAULT_EMIT)
    if not emit and not host_events:
        raise _error("emit", "is empty and host_events is off: nothing would be emitted")
    jitter = _optional(args, "jitter", _number, 0.1)
    if not 0 <= jitter < 1:
        raise _error(
            "jitter", f"must be a fraction of interval in [0, 1), got {_show(args['jitter'])}"
        )

    feedback = _optional(args, "feedback", _boolean, False)
    queue = args.get("eda_feedback_queue") if feedback else None
    if feedback and not isinstance(queue, asyncio.Queue):
        raise _error(
            "feedback",
            "is true but ansible-rulebook gave no feedback queue: run ansible-rulebook with "
            "--persistence-id (feedback needs persistence), or set feedback: false",
        )

    # the cheap checks come first: the hosts may need a slow inventory read
    jids = _optional(args, "jids", _jids, None)
    interval = _optional(args, "interval", _seconds, 15.0)
    state_file = _optional(args, "state_file", _state_file, None)
    redeliver_after = _optional(args, "redeliver_after", _seconds, None)
    lost_after = _optional(args, "lost_after", _seconds, None)
    max_output_bytes = _optional(args, "max_output_bytes", _at_least(256), 65536)
    max_concurrency = _optional(args, "max_concurrency", _at_least(1), 32)
    poll_timeout = _optional(args, "poll_timeout", _seconds, 60.0)
    backoff_max = _optional(args, "backoff_max", _seconds, 300.0)
    auth_backoff = _optional(args, "auth_backoff", _seconds_or_zero, 900.0)
    return SourceConfig(
        hosts=_hosts(args, secrets),
        jids=jids,
        interval=interval,
        jitter=jitter,
        emit=emit,
        state_file=state_file,
        redeliver_after=redeliver_after,
        lost_after=lost_after,
        max_output_bytes=max_output_bytes,
        host_events=host_events,
        feedback=feedback,
        feedback_queue=queue,
        max_concurrency=max_concurrency,
        poll_timeout=poll_timeout,
        backoff_max=backoff_max,
        auth_backoff=auth_backoff,
    )
