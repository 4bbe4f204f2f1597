"""Hosts and their connection settings from an Ansible inventory, read by ansible-core itself.

InventoryManager, VariableManager and Templar (rather than a parser of our own) make every
inventory format, group_vars/host_vars, vars plugins, vault and lookups behave as they do for
ansible-playbook, so ``ansible_password: "{{ lookup('env', 'WIN_PASSWORD') }}"`` keeps a
credential out of the rulebook. Variable names and their precedence mirror ansible's own psrp
and winrm connection plugins (for two variables of one option, the later one in a table wins,
as in ansible). Checking the values is config.py's job; this module only finds and templates
them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from winasync_eda.secret import Secret, mask

logger = logging.getLogger(__name__)

_PSRP_VARS: dict[str, tuple[str, ...]] = {
    "address": ("ansible_host", "ansible_psrp_host"),
    "username": ("ansible_user", "ansible_psrp_user"),
    "password": (
        "ansible_password",
        "ansible_winrm_pass",
        "ansible_winrm_password",
        "ansible_psrp_password",
    ),
    "port": ("ansible_port", "ansible_psrp_port"),
    "protocol": ("ansible_psrp_protocol",),
    "path": ("ansible_psrp_path",),
    "auth": ("ansible_psrp_auth",),
    "cert_validation": ("ansible_psrp_cert_validation",),
    "ca_path": ("ansible_psrp_cert_trust_path", "ansible_psrp_ca_cert"),
    "connection_timeout": ("ansible_psrp_connection_timeout",),
    "read_timeout": ("ansible_psrp_read_timeout",),
    "operation_timeout": ("ansible_psrp_operation_timeout",),
    "certificate_pem": ("ansible_psrp_certificate_pem",),
    "certificate_key_pem": ("ansible_psrp_certificate_key_pem",),
    "negotiate_hostname_override": ("ansible_psrp_negotiate_hostname_override",),
    "message_encryption": ("ansible_psrp_message_encryption",),
    "async_dir": ("ansible_async_dir",),
}

_WINRM_VARS: dict[str, tuple[str, ...]] = {
    "address": ("ansible_host", "ansible_winrm_host"),
    "username": ("ansible_user", "ansible_winrm_user"),
    "password": ("ansible_password", "ansible_winrm_pass", "ansible_winrm_password"),
    "port": ("ansible_port", "ansible_winrm_port"),
    "protocol": ("ansible_winrm_scheme",),
    "path": ("ansible_winrm_path",),
    "auth": ("ansible_winrm_transport",),
    "cert_validation": ("ansible_winrm_server_cert_validation",),
    "ca_path": ("ansible_winrm_ca_trust_path",),
    "connection_timeout": ("ansible_winrm_connection_timeout",),
    "read_timeout": ("ansible_winrm_read_timeout_sec",),
    "operation_timeout": ("ansible_winrm_operation_timeout_sec",),
    "certificate_pem": ("ansible_winrm_cert_pem",),
    "certificate_key_pem": ("ansible_winrm_cert_key_pem",),
    "message_encryption": ("ansible_winrm_message_encryption",),
    "async_dir": ("ansible_async_dir",),
}

_LOCAL_VARS: dict[str, tuple[str, ...]] = {"async_dir": ("ansible_async_dir",)}

_TABLES = {"psrp": _PSRP_VARS, "winrm": _WINRM_VARS, "local": _LOCAL_VARS}

# pywinrm transports that are basic auth; "plaintext" is basic auth without TLS, asked for.
_WINRM_BASIC = {"ssl": "basic", "plaintext": "basic"}

# ansible serialises inventory loading; ansible's loaders are not meant for threads either.
_LOCK = threading.Lock()


class InventoryError(ValueError):
    """An inventory problem; ``where`` names what is at fault, ``str(e)`` says how.

    ``where`` is ``inventory``, ``limit`` (the source arguments) or ``inventory host 'name'``.
    """

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True)
class Setting:
    """A templated value and the inventory variable it came from (for error messages)."""

    value: Any
    var: str


@dataclass(frozen=True)
class InventoryHost:
    """One inventory host: its name and the settings its variables give, in config.py's terms.

    Keys are those of a ``hosts`` item (``connection``, ``address``, ``port``, ``protocol``,
    ``username``, ``password`` (a Secret), ``auth``, ``cert_validation``, ``path``, the
    timeouts, ``certificate_pem``, ``certificate_key_pem``, ``async_dir``) plus
    ``message_encryption``. A key is absent when the inventory leaves it unset.
    """

    name: str
    settings: Mapping[str, Setting]


def connection_plugin(value: str) -> str | None:
    """``psrp``, ``winrm`` or ``local`` for an ansible connection name, else None."""
    name = value.strip().lower()
    for prefix in ("ansible.builtin.", "ansible.legacy."):
        name = name.removeprefix(prefix)
    return name if name in _TABLES else None


def load_hosts(
    sources: Sequence[str], limit: str | None, default_connection: str
) -> list[InventoryHost]:
    """Hosts of the inventory ``sources`` matching ``limit``, as ansible-playbook would see them.

    ``default_connection`` (psrp, winrm or local) chooses the variables of a host that sets no
    ``ansible_connection``.
    """
    with _LOCK:
        return _load_hosts(sources, limit, default_connection)


def _load_hosts(
    sources: Sequence[str], limit: str | None, default_connection: str
) -> list[InventoryHost]:
    # ansible is imported here: it is heavy, and only an inventory needs it.
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    paths = []
    for source in sources:
        path = os.path.abspath(os.path.expanduser(source))
        if not os.path.exists(path):
            raise InventoryError("inventory", f"{source!r} does not exist")
        if not os.access(path, os.R_OK):
            raise InventoryError("inventory", f"{source!r} is not readable")
        paths.append(path)

    _init_plugin_loader()
    loader = DataLoader()
    _setup_vault(loader)

    class _Manager(InventoryManager):  # type: ignore[misc]
        """Records which sources no inventory plugin could parse (ansible only warns)."""

        def __init__(self, **kwargs: Any) -> None:
            self.unparsed: list[str] = []
            super().__init__(**kwargs)

        def parse_source(self, source: str, cache: bool = False) -> bool:
            parsed = bool(super().parse_source(source, cache=cache))
            if not parsed:
                self.unparsed.append(source)
            return parsed

    try:
        inventory = _Manager(loader=loader, sources=paths)
    except AnsibleError as exc:
        raise InventoryError("inventory", f"cannot be read: {_first_line(exc)}") from None
    for source, path in zip(sources, paths, strict=True):
        if path in inventory.unparsed:
            raise InventoryError(
                "inventory",
                f"ansible cannot parse {source!r} as an inventory (its warnings above say why)",
            )
    for path in inventory.unparsed:
        logger.warning("inventory: ansible cannot parse %s, its hosts are left out", path)

    if limit is not None:
        try:
            inventory.subset(limit)
        except AnsibleError as exc:
            raise InventoryError("limit", f"{limit!r}: {_first_line(exc)}") from None
    try:
        hosts = inventory.get_hosts("all")
    except AnsibleError as exc:
        arg = "limit" if limit is not None else "inventory"
        raise InventoryError(arg, _first_line(exc)) from None
    if not hosts:
        if limit is not None:
            raise InventoryError("limit", f"{limit!r} matches no host of the inventory")
        raise InventoryError("inventory", "has no hosts")

    variables = VariableManager(loader=loader, inventory=inventory)
    return [_host_settings(loader, variables, host, default_connection) for host in hosts]


def _host_settings(
    loader: Any, variables: Any, host: Any, default_connection: str
) -> InventoryHost:
    from ansible.template import Templar

    name = str(host.name)
    hostvars = variables.get_vars(host=host)
    templar = Templar(loader=loader, variables=hostvars)
    settings: dict[str, Setting] = {}

    plugin = default_connection
    raw_connection = _render(templar, hostvars, name, "ansible_connection")
    if raw_connection is not None:
        found = connection_plugin(str(raw_connection))
        if found is None:
            raise InventoryError(
                f"inventory host {name!r}",
                f"ansible_connection {str(raw_connection)!r} is not supported "
                "(expected psrp, winrm or local); leave the host out with limit",
            )
        plugin = found
        settings["connection"] = Setting(plugin, "ansible_connection")

    for key, names in _TABLES[plugin].items():
        defined = [var for var in names if hostvars.get(var) is not None]
        if not defined:
            continue
        var = defined[-1]
        value = _render(templar, hostvars, name, var, secret=key == "password")
        if value is not None:
            settings[key] = Setting(value, var)

    if plugin == "winrm" and "auth" in settings:
        _winrm_transport(settings)
    _cert_validation(settings)
    return InventoryHost(name=name, settings=settings)


def _render(
    templar: Any, hostvars: Mapping[str, Any], host: str, var: str, *, secret: bool = False
) -> Any:
    """The templated, untagged value of ``var``; None for unset or empty."""
    raw = hostvars.get(var)
    if raw is None:
        return None
    try:
        value = _plain(templar.template(raw))
    except Exception as exc:
        detail = _first_line(exc)
        if secret:
            detail = mask(detail, [str(raw)])
        raise InventoryError(
            f"inventory host {host!r}", f"{var}: cannot be templated: {detail}"
        ) from None
    if value is None or value == "":
        return None
    if secret:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InventoryError(f"inventory host {host!r}", f"{var}: must be a string")
        return Secret(str(value))
    return value


def _winrm_transport(settings: dict[str, Setting]) -> None:
    """ansible_winrm_transport is a list (or comma string) of pywinrm transports: use the first."""
    setting = settings["auth"]
    value = setting.value
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not value:
        return  # config.py reports the odd value
    first = str(value[0]).strip().lower()
    settings["auth"] = Setting(_WINRM_BASIC.get(first, first), setting.var)
    if first == "plaintext" and "message_encryption" not in settings:
        settings["message_encryption"] = Setting("never", setting.var)


def _cert_validation(settings: dict[str, Setting]) -> None:
    """Mirror ansible: "ignore" wins, else a CA path, else the validation value as given."""
    ca_path = settings.pop("ca_path", None)
    validation = settings.get("cert_validation")
    if validation is not None and str(validation.value).strip().lower() == "ignore":
        return
    if ca_path is not None:
        settings["cert_validation"] = ca_path


def _plain(value: Any) -> Any:
    """Drop ansible's data tags so no ansible type travels further than this module."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _init_plugin_loader() -> None:
    """Install ansible's collection loader once, as ansible's CLIs do, for FQCN plugins."""
    from ansible.plugins.loader import init_plugin_loader
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader()


def _setup_vault(loader: Any) -> None:
    """Load the vault passwords ansible's configuration names (password file, identity list)."""
    from ansible import constants as C  # noqa: N812
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import VaultSecretsContext, get_file_vault_secret

    wanted: list[tuple[str | None, str]] = []
    for identity in C.config.get_config_value("DEFAULT_VAULT_IDENTITY_LIST") or []:
        label, at, source = identity.partition("@")
        if not at:
            label, source = "", identity
        if source not in ("prompt", "prompt_ask_vault_pass"):
            wanted.append((label or None, source))
    password_file = C.config.get_config_value("DEFAULT_VAULT_PASSWORD_FILE")
    if password_file:
        wanted.append((None, password_file))
    if not wanted:
        return

    default_id = C.config.get_config_value("DEFAULT_VAULT_IDENTITY")
    secrets = []
    for label, source in wanted:
        try:
            secret = get_file_vault_secret(filename=source, vault_id=label, loader=loader)
            secret.load()
        except AnsibleError as exc:
            raise InventoryError(
                "inventory", f"vault password file {source!r}: {_first_line(exc)}"
            ) from None
        secrets.append((label or default_id, secret))
    loader.set_vault_secrets(secrets)
    if VaultSecretsContext.current(optional=True) is None:
        VaultSecretsContext.initialize(VaultSecretsContext(secrets))
