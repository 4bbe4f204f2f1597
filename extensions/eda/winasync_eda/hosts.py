"""The hosts to watch: ``hosts`` items and inventory hosts, each built into one HostSettings.

Where a host's connection setting comes from, first found wins:

1. the host itself: a key of its ``hosts`` item, or its inventory variables (host_vars,
   group_vars, the inventory file; templated by ansible, so lookups and vault work);
2. the source-level argument of the same name (``username``, ``password``, ``auth``, ...,
   :data:`HOST_ARGUMENTS`): a default for every host, which only fills what the host leaves
   unset;
3. the built-in default, a field default of :class:`~winasync_eda.settings.HostSettings`
   (ansible's psrp one: https on 5986, or http when the port alone is 5985; negotiate auth;
   certificate validation; path ``wsman``).

Basic auth over plain http sends the password in the clear: it is allowed (encryption
``never``) only when both ``protocol: http`` and ``auth: basic`` were asked for (at any level,
or with ansible's ``ansible_psrp_message_encryption: never`` / winrm ``plaintext``), not when
http is only inferred from port 5985. That rule needs to know where a value came from, so it
lives here; every other rule lives in ``settings.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import checks
from .checks import error, show
from .inventory import InventoryError, load_hosts
from .secret import Secret
from .settings import AUTHS, ENCRYPTIONS, PROTOCOLS, HostSettings, SettingsError, protocol_for

# The check of each per-host setting. Every key but message_encryption (which only an
# inventory gives) may also be a source-level argument: a default for every host.
HOST_CHECKS: Mapping[str, Callable[[Any, str], Any]] = {
    "username": checks.text,
    "password": checks.password,
    "auth": checks.choice(AUTHS, "auth"),
    "protocol": checks.choice(PROTOCOLS, "protocol"),
    "port": checks.port,
    "cert_validation": checks.cert_validation,
    "async_dir": checks.text,
    "connection": checks.connection,
    "path": checks.wsman_path,
    "connection_timeout": checks.seconds,
    "read_timeout": checks.seconds,
    "operation_timeout": checks.seconds,
    "certificate_pem": checks.file_path,
    "certificate_key_pem": checks.file_path,
    "negotiate_hostname_override": checks.text,
    "address": checks.text,
    "message_encryption": checks.choice(ENCRYPTIONS, "message encryption"),
}
# the per-host settings that are also source-level arguments
HOST_ARGUMENTS = tuple(key for key in HOST_CHECKS if key not in ("address", "message_encryption"))
# the keys of a ``hosts`` item
HOST_KEYS = ("name", "address", *HOST_ARGUMENTS)

# A layer of host settings: key -> (checked value, the argument it came from).
Layer = dict[str, tuple[Any, str]]


def host_layer(items: Mapping[str, Any], where: Callable[[str], str], secrets: list[str]) -> Layer:
    """Check each setting of ``items``; a password found is added to ``secrets``."""
    layer: Layer = {}
    for key, raw in items.items():
        if raw is None or raw == "":
            continue  # unset: a lower layer or the default fills it
        value = HOST_CHECKS[key](raw, where(key))
        if isinstance(value, Secret):
            secrets.append(value.reveal())
        if value is not None:
            layer[key] = (value, where(key))
    return layer


@dataclass(frozen=True)
class _HostOrigin:
    label: str  # "hosts[2] ('win01')" or "inventory host 'win01'"
    hints: Mapping[str, str]  # where a missing setting can be set


def _build_host(
    name: str, merged: Layer, origin: _HostOrigin, watch_wait: float | None = None
) -> HostSettings:
    values = {key: value for key, (value, _) in merged.items() if key != "message_encryption"}
    if values.get("connection") == "winrm":
        values["connection"] = "psrp"  # ansible's other Windows connection, psrp here
    if values.get("connection", "psrp") == "psrp":
        if watch_wait is not None:
            _watch_timeouts(values, merged, origin, watch_wait)
        protocol = values.get("protocol") or protocol_for(values.get("port"))
        if protocol == "http" and values.get("auth") == "basic":
            encrypt = merged.get("message_encryption", ("auto", ""))[0]
            if "protocol" not in merged and encrypt != "never":
                raise error(
                    origin.label,
                    "basic auth over http (inferred from port 5985) would send the password "
                    "unencrypted; set protocol: http explicitly to allow it, or use https",
                )
            values["encryption"] = "never"
    try:
        host = HostSettings(name=name, **values)
    except SettingsError as exc:
        if exc.key in merged:
            raise error(merged[exc.key][1], exc.problem) from None
        hint = f" ({origin.hints[exc.key]})" if exc.key in origin.hints else ""
        raise error(origin.label, exc.problem + hint) from None
    if host.connection == "psrp" and host.auth == "certificate":
        for key in ("certificate_pem", "certificate_key_pem"):
            path = getattr(host, key)
            if not os.path.isfile(path):
                raise error(origin.label, f"{key} {path!r} does not exist")
    return host


def _watch_timeouts(
    values: dict[str, Any], merged: Layer, origin: _HostOrigin, watch_wait: float
) -> None:
    """The Receive parks on a waiting pipeline: both timeouts default to above the wait."""
    operation = values.setdefault("operation_timeout", watch_wait + checks.WATCH_OPERATION_MARGIN_S)
    values.setdefault("read_timeout", operation + checks.WATCH_READ_MARGIN_S)
    if operation <= watch_wait:
        where = merged["operation_timeout"][1] if "operation_timeout" in merged else origin.label
        raise error(
            where,
            f"operation_timeout ({operation:g}) must be greater than watch_wait "
            f"({watch_wait:g}) in watch mode: lower watch_wait, or raise it (at most the "
            f"host's MaxTimeoutms, {checks.WATCH_MAX_TIMEOUT_S:g} s by default)",
        )


def _host_items(raw: Any) -> list[tuple[int, Mapping[str, Any]]]:
    if raw is None:
        return []
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise error("hosts", f"must be a list of hosts, got {type(raw).__name__}")
    items: list[tuple[int, Mapping[str, Any]]] = []
    for index, item in enumerate(raw):
        where = f"hosts[{index}]"
        if isinstance(item, str):
            items.append((index, {"name": item}))
            continue
        if not isinstance(item, Mapping):
            raise error(
                where, f"must be a host name or a mapping with name, got {type(item).__name__}"
            )
        for key in item:
            if key not in HOST_KEYS:
                expected = ", ".join(HOST_KEYS)
                raise error(where, f"unknown key {str(key)!r} (expected one of: {expected})")
        if "name" not in item:
            raise error(where, "needs a name")
        items.append((index, item))
    return items


def _item_arg(prefix: str) -> Callable[[str], str]:
    return lambda key: f"{prefix}.{key}"


def build_hosts(
    args: Mapping[str, Any], secrets: list[str], watch_wait: float | None = None
) -> tuple[HostSettings, ...]:
    """Every host of ``hosts`` and ``inventory``, with the source-level defaults applied;
    ``watch_wait`` (watch mode) raises the timeouts' defaults above a waiting poll's wait."""
    defaults = host_layer({k: args[k] for k in HOST_ARGUMENTS if k in args}, str, secrets)
    hosts: list[HostSettings] = []
    seen: dict[str, str] = {}

    def add(host: HostSettings, label: str) -> None:
        if host.name in seen:
            raise error(label, f"duplicate host name {host.name!r} (also {seen[host.name]})")
        seen[host.name] = label
        hosts.append(host)

    for index, item in _host_items(args.get("hosts")):
        prefix = f"hosts[{index}]"
        name = checks.text(item["name"], f"{prefix}.name")
        own = host_layer({k: v for k, v in item.items() if k != "name"}, _item_arg(prefix), secrets)
        hints = {key: f"set {prefix}.{key} or {key}" for key in ("username", "password")}
        add(
            _build_host(
                name, {**defaults, **own}, _HostOrigin(f"{prefix} ({name!r})", hints), watch_wait
            ),
            prefix,
        )

    if "inventory" in args and args["inventory"] is not None:
        for host in _inventory_hosts(args, defaults, secrets, watch_wait):
            add(host, f"inventory host {host.name!r}")
    elif args.get("limit") is not None:
        raise error("limit", "needs inventory (limit selects inventory hosts)")

    if not hosts:
        raise error("hosts", "no host to watch: give hosts and/or inventory")
    return tuple(hosts)


# --- inventory hosts -----------------------------------------------------------------------

_INVENTORY_HINTS = {
    "username": "set ansible_user in the inventory or username",
    "password": "set ansible_password in the inventory or password",
}


def _sources(raw: Any) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if (
        not isinstance(raw, Sequence)
        or not raw
        or not all(isinstance(s, str) and s.strip() for s in raw)
    ):
        raise error("inventory", f"must be the path of an Ansible inventory, got {show(raw)}")
    return [s.strip() for s in raw]


def _inventory_hosts(
    args: Mapping[str, Any], defaults: Layer, secrets: list[str], watch_wait: float | None
) -> list[HostSettings]:
    """The inventory's hosts: their variables (inventory.py) as a layer over the defaults."""
    limit = args.get("limit")
    if limit is not None and (not isinstance(limit, str) or not limit.strip()):
        raise error("limit", f"must be a host pattern, got {show(limit)}")
    default_connection = defaults["connection"][0] if "connection" in defaults else "psrp"
    try:
        found = load_hosts(_sources(args["inventory"]), limit, default_connection)
    except InventoryError as exc:
        raise error(exc.where, str(exc)) from None

    hosts = []
    for entry in found:
        label = f"inventory host {entry.name!r}"
        raw = {key: setting.value for key, setting in entry.settings.items()}
        names = {key: f"{label}: {setting.var}" for key, setting in entry.settings.items()}
        own = host_layer(raw, names.__getitem__, secrets)
        hosts.append(
            _build_host(
                entry.name, {**defaults, **own}, _HostOrigin(label, _INVENTORY_HINTS), watch_wait
            )
        )
    return hosts
