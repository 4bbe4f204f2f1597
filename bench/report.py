"""Progress lines, plain-text tables and the JSON results file."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_STARTED = time.monotonic()


def parse_options(
    argv: list[str] | None,
    *,
    prog: str,
    description: str | None,
    profiles: Mapping[str, Any],
    out: Path,
) -> argparse.Namespace:
    """The options every benchmark entry point takes: a profile, ``--out``, ``--keep``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    group = parser.add_mutually_exclusive_group()
    for name in profiles:
        group.add_argument(
            f"--{name}", dest="profile", action="store_const", const=name, help=f"{name} profile"
        )
    parser.set_defaults(profile="quick")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, sim disk)")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return opts


@contextlib.contextmanager
def work_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary work dir, removed after a run that ended normally unless ``keep``; kept (and
    named) after a failure, for its logs."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        yield workdir
        ok = True
    finally:
        if ok and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"work dir kept: {workdir}")


def progress(message: str) -> None:
    """One line on stdout as the run goes, with the seconds since start."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", flush=True)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write atomically (temp + rename), with when and where it was measured."""
    doc = {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        **data,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
