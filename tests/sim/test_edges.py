"""The simulated host stands alone: it never imports the product nor the test plumbing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.sim

# every module of winsim, imported in a fresh interpreter that has the product on its path too
PROBE = """
import importlib, json, pkgutil, sys
import winsim
for info in pkgutil.walk_packages(winsim.__path__, "winsim."):
    if info.name == "winsim.__main__":  # runs the CLI
        continue
    importlib.import_module(info.name)
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in
                        ("winasync_eda", "harness", "tests", "bench", "demo"))))
"""


def test_winsim_imports_neither_the_product_nor_the_harness() -> None:
    path = f"{REPO}:{REPO / 'extensions' / 'eda'}"
    found = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert json.loads(found.stdout) == []
