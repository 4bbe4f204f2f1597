"""Where things are in this checkout, for every test folder."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "extensions/eda/plugins/event_source/async_jobs.py"
# ansible.windows, unpacked by `make setup`
DEPENDENCY_COLLECTIONS = REPO / ".work" / "collections"
