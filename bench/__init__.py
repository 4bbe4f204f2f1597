"""Benchmarks and the reliability soak of winasync.eda, run against simulated Windows hosts.

The simulator runs in the benchmark process (its per-host counters see every HTTP request);
the event source runs in a child process (``bench.source_proc``) so that its CPU and memory are
its own; the classic baseline is a real ``ansible-playbook`` over psrp against the same sim.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


class BenchError(RuntimeError):
    """A benchmark step did not do what it must (its numbers would be meaningless)."""
