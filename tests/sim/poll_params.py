"""The poll script's parameters as the client binds them, for the tests that call the script (or
its twin) on the simulated host directly."""

from __future__ import annotations

import json
from typing import Any, TypedDict

ASYNC_DIR = r"%USERPROFILE%\.ansible_async"


class PollArgs(TypedDict, total=False):
    """What a test may set; the rest is what the client sends on a first plain poll."""

    known: dict[str, str] | None
    pids: list[int] | None
    only: list[str] | None
    max_bytes: int
    max_answer: int
    async_dir: str
    # a waiting poll (watch mode): ``Wait`` in seconds, ``Seen`` the watchdogs' last state
    wait: str
    seen: dict[str, int | None] | None


def poll_params(args: PollArgs) -> list[tuple[str | None, Any]]:
    """A plain poll's parameters; with ``wait``, a waiting poll's (``Wait`` and ``Seen``)."""
    params: list[tuple[str | None, Any]] = [
        ("AsyncDir", args.get("async_dir", ASYNC_DIR)),
        ("Known", json.dumps(args.get("known") or {})),
        ("Pids", json.dumps(args.get("pids") or [])),
        ("Only", json.dumps(args.get("only") or [])),
        ("MaxBytes", str(args.get("max_bytes", 1_000_000))),
        ("MaxAnswer", str(args.get("max_answer", 4 * 1024 * 1024))),
    ]
    if "wait" in args:
        params += [("Wait", args["wait"]), ("Seen", json.dumps(args.get("seen") or {}))]
    return params
