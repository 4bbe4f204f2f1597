"""The event source in a process of its own, so its CPU and memory are measured apart from the sim.

    python -m bench.source_proc ARGS_JSON EVENTS_FILE

Runs the plugin's ``main(queue, args)`` (the file ansible-rulebook loads) and appends one JSON
line per record to EVENTS_FILE, each written with a single ``write`` so a SIGKILL never leaves
half a line behind in practice:

- ``{"kind": "start", "t": ..., "pid": ...}``
- ``{"kind": "event", "t": <arrival, epoch s>, "event": {...}}`` as the queue hands it over
- ``{"kind": "stats", "t": ..., "cpu_s": ..., "rss_kb": ..., "threads": ...}`` once a second
- ``{"kind": "exit", "t": ..., "cpu_s": ..., "rss_kb": ..., "maxrss_kb": ..., "error": ...}``
  after SIGTERM (the source is cancelled as ansible-rulebook would) or a crash of the source.

With ``"feedback": true`` in the arguments it acknowledges each event after writing it, as
ansible-rulebook does with ``--persistence-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

from bench import ROOT

PLUGIN = ROOT / "extensions" / "eda" / "plugins" / "event_source" / "async_jobs.py"
STATS_PERIOD_S = 1.0
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

Main = Callable[[asyncio.Queue[Any], dict[str, Any]], Coroutine[Any, Any, None]]


def load_plugin_main() -> Main:
    """``main`` of the plugin file, loaded by path as ansible-rulebook does."""
    spec = importlib.util.spec_from_file_location("async_jobs_plugin", PLUGIN)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {PLUGIN}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Main, module.main)


def rss_kb() -> int:
    """Resident set size now (Linux /proc), in KiB."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def threads() -> int:
    """Threads of this process now."""
    return threading.active_count()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Writer:
    """Appends JSON lines to the events file, one ``write`` per line."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def line(self, kind: str, **fields: Any) -> None:
        record = {"kind": kind, "t": time.time(), **fields}
        data = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)


async def _consume(
    queue: asyncio.Queue[Any], out: Writer, feedback: asyncio.Queue[Any] | None
) -> None:
    while True:
        event = await queue.get()
        out.line("event", event=event)
        if feedback is not None:
            await feedback.put(event)


async def _stats(out: Writer) -> None:
    while True:
        out.line("stats", cpu_s=cpu_s(), rss_kb=rss_kb(), threads=threads())
        await asyncio.sleep(STATS_PERIOD_S)


async def run(args: dict[str, Any], out: Writer) -> int:
    main = load_plugin_main()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)  # ansible-rulebook's size
    feedback: asyncio.Queue[Any] | None = None
    if args.get("feedback"):
        feedback = asyncio.Queue()
        args["eda_feedback_queue"] = feedback
    source = asyncio.create_task(main(queue, args), name="source")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, source.cancel)
    loop.add_signal_handler(signal.SIGINT, source.cancel)
    helpers = [
        asyncio.create_task(_consume(queue, out, feedback)),
        asyncio.create_task(_stats(out)),
    ]
    out.line("start", pid=os.getpid())
    error: str | None = None
    try:
        await source
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # the source ended by itself: that is the finding
        error = f"{type(exc).__name__}: {exc}"
        logging.getLogger(__name__).exception("the source stopped")
    else:
        error = "the source returned"
    for task in helpers:
        task.cancel()
    for task in helpers:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.line(
        "exit",
        cpu_s=usage.ru_utime + usage.ru_stime,
        rss_kb=rss_kb(),
        maxrss_kb=usage.ru_maxrss,
        error=error,
    )
    return 0 if error is None else 1


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.source_proc ARGS_JSON EVENTS_FILE", file=sys.stderr)
        return 2
    args = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("winasync_eda").setLevel(logging.INFO)
    out = Writer(Path(argv[1]))
    try:
        return asyncio.run(run(args, out))
    finally:
        out.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
