"""harness.process: stopping a child ends its whole tree, also what left its process group."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness.process import ChildProcess
from tests.waiting import wait_until

# starts a grandchild in a session of its own (as ansible-runner starts ansible-playbook), prints
# its pid, and waits
SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_stop_ends_a_grandchild_in_another_session(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", SPAWNER], log_path=tmp_path / "out.log")
    with child:
        wait_until(lambda: child.text().strip(), 30, "the grandchild's pid")
        grandchild = int(child.text().split()[0])
        assert os.getsid(grandchild) != os.getsid(child.pid or 0)
        assert set(child.leftovers()) == {child.pid, grandchild}
    assert not child.running
    assert child.leftovers() == []
    assert not alive(grandchild)


def test_kill_reports_the_exit_and_a_log_is_appended(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text("before\n")
    child = ChildProcess(
        [sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(600)"],
        log_path=log,
    ).start()
    wait_until(lambda: "hello" in child.text(), 30, "the child's output")
    assert child.kill() == -9
    assert child.text().startswith("before\n")
    assert child.returncode == -9 and not child.running
