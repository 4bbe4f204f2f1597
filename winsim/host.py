"""The state of one simulated Windows host: its user profile on disk, clock, boot and processes.

The async dir is a real directory, so the poll script, ``async_status`` and the scripted jobs all
see the same bytes a Windows host would hold. Everything that mutates the host runs on the
server's event loop; the ``*`` methods that tests call from another thread hop onto that loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ntpath
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from winsim.jobfiles import Generation
from winsim.jobs import DEFAULT_ASYNC_DIR, JobSpec, Outcome, ScriptedJob, start

log = logging.getLogger(__name__)

T = TypeVar("T")
PsEdition = Literal["5.1", "7"]
LanguageMode = Literal["FullLanguage", "ConstrainedLanguage"]
# what Set-AuthenticodeSignature appends to a script it signs
SIGNATURE_BLOCK = "# SIG # Begin signature block"

# Windows pids are multiples of 4; a reboot restarts the sequence, so pids come back.
FIRST_PID = 4000
PID_STEP = 4
THREAD_CALL_TIMEOUT_S = 30.0
# WinRS MaxMemoryPerShellMB's default (Windows Server 2012 and later)
DEFAULT_MEMORY_QUOTA_MB = 1024
OUT_OF_MEMORY = "Exception of type 'System.OutOfMemoryException' was thrown."


class MemoryQuotaExceededError(Exception):
    """A pipeline passed the shell's memory quota: the pipeline fails."""


def expand_environment_variables(text: str, env: Mapping[str, str]) -> str:
    """``[Environment]::ExpandEnvironmentVariables``: ``%NAME%`` case-insensitive, unknown kept.

    Like ExpandEnvironmentStringsW, the closing ``%`` of an unknown name may open the next one.
    """
    folded = {k.casefold(): v for k, v in env.items()}
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        start = text.find("%", i)
        if start < 0:
            out.append(text[i:])
            break
        out.append(text[i:start])
        end = text.find("%", start + 1)
        if end < 0:
            out.append(text[start:])
            break
        name = text[start + 1 : end]
        value = folded.get(name.casefold()) if name else None
        if value is None:
            out.append(text[start:end])
            i = end
        else:
            out.append(value)
            i = end + 1
    return "".join(out)


class SimHost:
    """One named host; ``root`` is ``<state_dir>/<name>`` and stands for its ``C:\\`` drive."""

    def __init__(
        self,
        name: str,
        state_dir: str | os.PathLike[str],
        *,
        user: str = "ansible",
        generation: Generation = "2.19-ps51",
        clock: Callable[[], float] = time.time,
        boot_ms: int | None = None,
        memory_quota_mb: int = DEFAULT_MEMORY_QUOTA_MB,
    ) -> None:
        self.name = name
        self.user = user
        self.generation: Generation = generation
        self.clock = clock
        self.state_dir = Path(state_dir)
        self.root = self.state_dir / name
        self.profile_dir = self.root / "Users" / user
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = self._default_env()
        self.boot_ms: int = self.now_ms() if boot_ms is None else boot_ms
        # pid -> start time (ms since the epoch, UTC)
        self.processes: dict[int, int] = {}
        # running pids whose start time cannot be read (the poll reports -1)
        self.hidden_start_pids: set[int] = set()
        # case-folded Windows paths of files that fail to open (sharing violation)
        self.locked_paths: set[str] = set()
        # the remote session's $ExecutionContext.SessionState.LanguageMode: ConstrainedLanguage
        # under App Control for Business or AppLocker script enforcement
        self.language_mode: LanguageMode = "FullLanguage"
        # the system ANSI code page ([Text.Encoding]::Default on 5.1), which Set-Content without
        # -Encoding writes: 1252 in Western Europe and the US, 1251 Cyrillic, 932 Japanese
        self.ansi_codepage = 1252
        # how long a read keeps its handle open on a job file (a model: the poll reads in one
        # pre-sized read), and the open handles: folded Windows path -> loop time they close
        self.read_hold_s = 0.0
        self._open_reads: dict[str, float] = {}
        # case-folded Windows paths of directories this user may not list (access denied)
        self.denied_dirs: set[str] = set()
        self.jobs: dict[str, ScriptedJob] = {}
        # WinRS MaxMemoryPerShellMB: a pipeline whose working set would pass it fails
        self.memory_quota_mb = memory_quota_mb
        self.peak_working_set = 0
        self.quota_failures = 0
        # WinRM quotas (defaults of Windows Server): shells one user may hold (WinRS 30, the
        # PowerShell endpoint 25: the stricter applies, but 30 is what `winrm get` shows), the
        # cap on a request's OperationTimeout (MaxTimeoutms), and the shortest idle timeout a
        # client may ask for (the endpoint's minimum; lowered only by tests of the reaping)
        self.max_shells_per_user = 30
        self.max_timeout_s = 60.0
        self.min_idle_timeout_s = 60.0
        self.max_idle_timeout_s = 7200.0
        # poll pipelines waiting for a change now (watch mode), and the most at once
        self.waiting_polls = 0
        self.peak_waiting_polls = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        # called on the loop after a reboot: the protocol layer drops its shells, as the
        # real host's wsmprovhost processes die with it
        self.reboot_listeners: list[Callable[[], object]] = []
        self._next_pid = FIRST_PID
        self._ctimes: dict[str, int] = {}
        self._lock = threading.RLock()
        # the wsmprovhost process that runs ansible's async_wrapper (the `.pid` of a jid)
        self.session_pid = self.spawn_process()

    # -- quotas ---------------------------------------------------------------------------------

    def charge_memory(self, working_set: int, what: str) -> None:
        """Fail like WinRM when a pipeline's working set passes MaxMemoryPerShellMB.

        WinRM puts the shell's process in a job object with that memory limit: the allocation
        that passes it fails, and .NET raises OutOfMemoryException in the pipeline (0 = no
        limit). The working set is the caller's model of what PowerShell would hold.
        """
        self.peak_working_set = max(self.peak_working_set, working_set)
        if self.memory_quota_mb and working_set > self.memory_quota_mb * 1024 * 1024:
            self.quota_failures += 1
            log.warning(
                "host %s: %s needs about %d MB, over MaxMemoryPerShellMB %d",
                self.name,
                what,
                working_set >> 20,
                self.memory_quota_mb,
            )
            raise MemoryQuotaExceededError(OUT_OF_MEMORY)

    # -- identity and clock -------------------------------------------------------------------

    @property
    def ps_edition(self) -> PsEdition:
        return "7" if self.generation == "2.19-pwsh7" else "5.1"

    @property
    def ansi_encoding(self) -> str:
        """The Python codec of the host's ANSI code page."""
        return f"cp{self.ansi_codepage}"

    @property
    def userprofile(self) -> str:
        return rf"C:\Users\{self.user}"

    @property
    def async_dir(self) -> str:
        """The default async dir, expanded (``C:\\Users\\<user>\\.ansible_async``)."""
        return self.expand(DEFAULT_ASYNC_DIR)

    @property
    def async_dir_path(self) -> Path:
        path = self.to_local(self.async_dir)
        assert path is not None
        return path

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _default_env(self) -> dict[str, str]:
        profile = self.userprofile
        return {
            "USERPROFILE": profile,
            "USERNAME": self.user,
            "USERDOMAIN": self.name.upper(),
            "COMPUTERNAME": self.name.upper(),
            "HOMEDRIVE": "C:",
            "HOMEPATH": rf"\Users\{self.user}",
            "SystemDrive": "C:",
            "SystemRoot": r"C:\Windows",
            "windir": r"C:\Windows",
            "ProgramData": r"C:\ProgramData",
            "ProgramFiles": r"C:\Program Files",
            "APPDATA": rf"{profile}\AppData\Roaming",
            "LOCALAPPDATA": rf"{profile}\AppData\Local",
            "TEMP": rf"{profile}\AppData\Local\Temp",
            "TMP": rf"{profile}\AppData\Local\Temp",
            "PUBLIC": r"C:\Users\Public",
        }

    def expand(self, text: str) -> str:
        return expand_environment_variables(text, self.env)

    # -- paths ----------------------------------------------------------------------------------

    def to_local(self, win_path: str) -> Path | None:
        """Map an absolute ``C:\\`` path to disk, matching names case-insensitively.

        Anything else (another drive, UNC, relative) has no place on this host: None.
        """
        norm = ntpath.normpath(win_path.replace("/", "\\"))
        drive, rest = ntpath.splitdrive(norm)
        if drive.casefold() != "c:" or not rest.startswith("\\"):
            return None
        current = self.root
        for part in rest.split("\\"):
            if part in ("", "."):
                continue
            current = _child_casefold(current, part)
        return current

    def to_windows(self, local: Path) -> str:
        rel = local.relative_to(self.root)
        return "C:\\" + "\\".join(rel.parts)

    def local_async_dir(self, async_dir: str = DEFAULT_ASYNC_DIR) -> tuple[str, Path | None]:
        expanded = self.expand(async_dir)
        return expanded, self.to_local(expanded)

    # -- files ----------------------------------------------------------------------------------

    def write_file(self, path: Path, data: bytes, *, truncate_only: bool = False) -> None:
        """Write as a Windows writer would, stamping the host clock as the last write time."""
        created = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            if not truncate_only:
                fh.write(data)
        now_ns = int(self.clock() * 1_000_000_000)
        os.utime(path, ns=(now_ns, now_ns))
        if created:
            self._ctimes[str(path)] = now_ns // 1_000_000

    def ctime_ms(self, path: Path, st: os.stat_result) -> int:
        """Creation time: Linux has none, so the host remembers what it created."""
        return self._ctimes.get(str(path), st.st_mtime_ns // 1_000_000)

    def forget_file(self, path: Path) -> None:
        self._ctimes.pop(str(path), None)

    def deny_access(self, win_path: str, denied: bool = True) -> None:
        """Make a directory unlistable for the user, as a changed ACL would."""
        _mark(self.denied_dirs, win_path, denied)

    def is_denied(self, win_path: str) -> bool:
        return ntpath.normpath(win_path).casefold() in self.denied_dirs

    def script_language_mode(self, win_path: str, text: str) -> LanguageMode:
        """The mode a script file runs in when invoked by path: FullLanguage when it carries a
        signature (the policy is taken to trust its signer), else the session's mode."""
        return "FullLanguage" if SIGNATURE_BLOCK in text else self.language_mode

    def hold_read(self, win_path: str) -> None:
        """A reader opened the file: its handle stays open ``read_hold_s`` seconds."""
        if self.read_hold_s > 0 and self.loop is not None:
            key = ntpath.normpath(win_path).casefold()
            self._open_reads[key] = self.loop.time() + self.read_hold_s

    def reader_holds(self, win_path: str) -> bool:
        """Whether a reader's handle is open on the file now."""
        key = ntpath.normpath(win_path).casefold()
        until = self._open_reads.get(key)
        if until is None or self.loop is None:
            return False
        if self.loop.time() < until:
            return True
        del self._open_reads[key]
        return False

    def lock_file(self, win_path: str, locked: bool = True) -> None:
        _mark(self.locked_paths, win_path, locked)

    def is_locked(self, win_path: str) -> bool:
        key = ntpath.normpath(win_path).casefold()
        if key in self.locked_paths:
            return True
        name = ntpath.basename(key)
        job = next((j for j in self.jobs.values() if j.jid.casefold() == name), None)
        return job is not None and job.is_locked_for(key)

    # -- processes ------------------------------------------------------------------------------

    def spawn_process(self, pid: int | None = None, start_ms: int | None = None) -> int:
        """Register a process; without ``pid`` the next one in the boot's sequence (reused)."""
        with self._lock:
            if pid is None:
                while self._next_pid in self.processes:
                    self._next_pid += PID_STEP
                pid = self._next_pid
                self._next_pid += PID_STEP
            self.processes[pid] = self.now_ms() if start_ms is None else start_ms
            return pid

    def kill_process(self, pid: int) -> None:
        with self._lock:
            self.processes.pop(pid, None)
            self.hidden_start_pids.discard(pid)

    def process_start_ms(self, pid: int) -> int | None:
        """Start time in ms, -1 when it runs but the start cannot be read, None when gone."""
        with self._lock:
            start = self.processes.get(pid)
            if start is None:
                return None
            return -1 if pid in self.hidden_start_pids else start

    # -- event loop -----------------------------------------------------------------------------

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that runs this host's jobs (the server's)."""
        self.loop = loop

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the host's loop: directly when already there, else hop and wait."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and (self.loop is None or running is self.loop):
            self.loop = running
            return fn(*args, **kwargs)
        loop = self.loop
        if loop is None:
            # nothing can run on a loop yet: no job to race with
            return fn(*args, **kwargs)
        if loop.is_closed():
            raise RuntimeError(f"host {self.name}: its event loop is closed")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed back to the caller's thread
                fut.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return fut.result(THREAD_CALL_TIMEOUT_S)

    # -- reboot and jobs ------------------------------------------------------------------------

    def reboot(self) -> None:
        """Boot time = now; every process gone; running jobs die without a final write."""
        self.call(self._reboot)

    def _reboot(self) -> None:
        for job in list(self.jobs.values()):
            job.kill()
        with self._lock:
            self.processes.clear()
            self.hidden_start_pids.clear()
            self._next_pid = FIRST_PID
            self.boot_ms = self.now_ms()
            self.session_pid = self.spawn_process()
        log.info("host %s rebooted", self.name)
        for listener in list(self.reboot_listeners):
            try:
                listener()
            except Exception:
                log.exception("host %s: a reboot listener failed", self.name)

    def start_job(
        self, outcome: Outcome = "finished", duration_s: float = 1.0, **options: Any
    ) -> str:
        """Start a scripted async job; returns its jid (``j<digits>.<pid>``). Any thread.

        ``options`` are the other fields of :class:`~winsim.jobs.JobSpec` (``rc``, ``stdout``,
        ``generation`` (this host's when unset), ``write``, ...).
        """
        if options.get("generation") is None:
            options["generation"] = self.generation
        options["result"] = dict(options.get("result") or {})
        spec = JobSpec(outcome=outcome, duration_s=duration_s, **options)
        return self.call(start, self, spec).jid

    def job(self, jid: str) -> ScriptedJob:
        return self.jobs[jid]

    def step_write(self, jid: str) -> None:
        """Let a job held by ``WriteControl(hold=True)`` go on to its next write step."""
        self.call(self.jobs[jid].step)

    def end_job_now(self, jid: str) -> None:
        """Cut a job's duration short: it reaches its outcome now."""
        self.call(self.jobs[jid].end_now)

    def orphan_job(self, jid: str) -> None:
        """Kill a job's watchdog: its file stays unfinished for good."""
        self.call(self.jobs[jid].kill, "orphaned")

    def wait_until_finished(self, jid: str, timeout: float = 30.0) -> ScriptedJob:
        """Block (not on the loop's thread) until the job ended: done, orphaned or killed."""
        job = self.jobs[jid]
        if self.loop is not None and self.loop.is_running() and _on_loop_thread(self.loop):
            raise RuntimeError("wait_until_finished blocks: use `await job.wait(timeout)` instead")
        if not job.ended.wait(timeout):
            raise TimeoutError(f"job {jid} on {self.name} not ended after {timeout}s")
        return job


def _mark(marked: set[str], win_path: str, on: bool) -> None:
    """Add the path to (or take it from) a set of Windows paths, compared case-insensitively."""
    key = ntpath.normpath(win_path).casefold()
    if on:
        marked.add(key)
    else:
        marked.discard(key)


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _child_casefold(parent: Path, name: str) -> Path:
    exact = parent / name
    if exact.exists() or not parent.is_dir():
        return exact
    folded = name.casefold()
    try:
        for entry in os.scandir(parent):
            if entry.name.casefold() == folded:
                return parent / entry.name
    except OSError:
        pass
    return exact
