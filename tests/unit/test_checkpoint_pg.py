"""checkpoint_db / checkpoint_id are checked up front: one line naming the argument, no secret.
(The store against a real PostgreSQL: tests/integration/test_checkpoint_pg.py.)"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from winasync_eda.checkpoint import Changes
from winasync_eda.checkpoint_pg import TABLE_PREFIX
from winasync_eda.config import ConfigError, parse_args
from winasync_eda.secret import Secret

BASE: dict[str, Any] = {"hosts": [{"name": "win01", "connection": "local"}]}
PASSWORD = "s3cret-Pa55word"
DB = {"host": "db.example", "port": 5432, "dbname": "eda", "user": "eda", "password": PASSWORD}


def parse(**extra: Any) -> Any:
    return parse_args({**BASE, **extra})


def test_a_mapping_in_drools_db_style_is_taken_and_the_password_wrapped() -> None:
    cfg = parse(checkpoint_db=DB, checkpoint_id="42")
    assert cfg.checkpoint_id == "42"
    params = dict(cfg.checkpoint_db.params)
    assert params["host"] == "db.example" and params["port"] == "5432"
    assert isinstance(params["password"], Secret)
    assert PASSWORD not in repr(cfg.checkpoint_db)
    assert cfg.checkpoint_db.describe() == "db.example:5432/eda"


def test_a_connection_string_is_taken() -> None:
    cfg = parse(
        checkpoint_db=f"host=db.example port=5433 dbname=eda user=eda password={PASSWORD}",
        checkpoint_id="a-1",
    )
    assert cfg.checkpoint_db.describe() == "db.example:5433/eda"
    assert PASSWORD not in repr(cfg)


def test_a_mapping_of_empty_values_is_off() -> None:
    # what the shipped rulebook passes when the activation has no drools_db_* variables
    cfg = parse(checkpoint_db={"host": None, "port": None, "dbname": "", "password": None})
    assert cfg.checkpoint_db is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"checkpoint_db": {**DB, "passwd": PASSWORD}}, r"checkpoint_db\.passwd: unknown key"),
        ({"checkpoint_db": {"port": 5432, "password": PASSWORD}}, "checkpoint_db: needs a host"),
        ({"checkpoint_db": {**DB, "port": "54x"}}, r"checkpoint_db\.port: '54x' is not a port"),
        ({"checkpoint_db": 5432}, "checkpoint_db: must be a connection string or a mapping"),
        (
            {"checkpoint_db": f"host=db password={PASSWORD} nonsense"},
            "checkpoint_db: is not a valid PostgreSQL connection string",
        ),
        ({"checkpoint_db": DB, "checkpoint_id": "a b"}, "checkpoint_id: must be 1-40"),
        ({"checkpoint_db": DB, "checkpoint_id": "x" * 41}, "checkpoint_id: must be 1-40"),
        ({"checkpoint_db": DB}, "checkpoint_db: needs checkpoint_id, or ansible-rulebook's"),
        (
            {"checkpoint_db": DB, "checkpoint_id": "1", "state_file": "/tmp/s.json"},
            "checkpoint_db: and state_file are both set",
        ),
    ],
)
def test_bad_values_are_one_line_naming_the_argument(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse(**extra)
    assert PASSWORD not in str(info.value)
    assert "\n" not in str(info.value)


def test_the_id_defaults_to_ansible_rulebooks_persistence_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = types.ModuleType("ansible_rulebook.conf")
    conf.settings = types.SimpleNamespace(persistence_id="77")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ansible_rulebook.conf", conf)
    cfg = parse(checkpoint_db=DB)
    assert cfg.checkpoint_id == "77"
    assert TABLE_PREFIX + cfg.checkpoint_id == "winasync_checkpoint_77"


def test_changes_forget_a_job_after_its_records_and_keep_later_ones() -> None:
    older = Changes()
    older.upserts[("h", "j1.1", "finished")] = 1
    newer = Changes()
    newer.remove("h", "j1.1")
    newer.upserts[("h", "j2.2", "failed")] = 2
    older.merge_newer(newer)
    assert older.removed == {("h", "j1.1")}
    assert older.upserts == {("h", "j2.2", "failed"): 2}
