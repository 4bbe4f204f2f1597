"""The plugin's DOCUMENTATION says what parse_args does: the same names, the same defaults."""

from __future__ import annotations

import runpy
from typing import Any

import pytest
import yaml
from winasync_eda.config import ARGUMENTS, SourceConfig, parse_args
from winasync_eda.settings import AUTHS, LOCAL_ASYNC_DIR, PROTOCOLS, PSRP_ASYNC_DIR

from tests.paths import PLUGIN

OPTIONS: dict[str, dict[str, Any]] = yaml.safe_load(runpy.run_path(str(PLUGIN))["DOCUMENTATION"])[
    "options"
]
# the fewest arguments parse_args accepts: a host, with the credentials its default auth needs
MINIMAL = {"hosts": ["win01"], "username": "u", "password": "p"}


def defaults() -> tuple[SourceConfig, dict[str, Any]]:
    config = parse_args(MINIMAL)
    (host,) = config.hosts
    return config, vars(host)


def test_documentation_lists_exactly_the_accepted_arguments() -> None:
    assert set(OPTIONS) == set(ARGUMENTS)


@pytest.mark.parametrize("name", sorted(n for n in OPTIONS if "default" in OPTIONS[n]))
def test_each_documented_default_is_what_parse_args_gives(name: str) -> None:
    config, host = defaults()
    documented = OPTIONS[name]["default"]
    if name == "async_dir":  # one default per connection, both named
        local = parse_args({"hosts": [{"name": "me", "connection": "local"}]}).hosts[0]
        assert (host["async_dir"], local.async_dir) == (PSRP_ASYNC_DIR, LOCAL_ASYNC_DIR)
        assert documented == f"{PSRP_ASYNC_DIR} (psrp), {LOCAL_ASYNC_DIR} (local)"
        return
    actual = host[name] if name in host else getattr(config, name)
    if name == "emit":
        assert set(documented) == set(actual)
    else:
        assert documented == actual, name


@pytest.mark.parametrize("name", sorted(n for n in OPTIONS if "default" not in OPTIONS[n]))
def test_an_argument_without_a_documented_default_is_unset_by_default(name: str) -> None:
    config, host = defaults()
    if name in ("hosts", "inventory", "limit", "username", "password"):
        return  # given here, or not kept as such
    actual = host[name] if name in host else getattr(config, name)
    assert actual is None, name


def test_documented_choices_are_the_accepted_ones() -> None:
    assert OPTIONS["auth"]["choices"] == list(AUTHS)
    assert OPTIONS["protocol"]["choices"] == list(PROTOCOLS)
