"""pyspnego's NTLM acceptor and its process-wide user file, shared by many hosts in one process.

pyspnego reads the users an NTLM acceptor checks against only from the file named by the
environment variable ``NTLM_USER_FILE``, again at every AUTHENTICATE message. One process serves
many hosts, each with its own users. So this module owns that variable and one private file:
the variable is set once and never changed again, and each acceptor step that may read the file
runs under one process-wide lock, with the file holding exactly the users of the host whose
client is authenticating. A host never sees another host's users, whatever thread or event
loop its server runs on. A step is a few hashes (well under a millisecond) and happens once per
TCP connection, so the lock costs nothing that matters.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_VAR = "NTLM_USER_FILE"


class NtlmUserFile:
    """The one user file of this process; use ``USER_FILE``, not a new instance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._written: str | None = None

    def ensure(self) -> Path:
        """Create the file and point ``NTLM_USER_FILE`` at it (once per process)."""
        with self._lock:
            return self._ensure_locked()

    def _ensure_locked(self) -> Path:
        if self._path is None:
            directory = tempfile.mkdtemp(prefix="winsim-ntlm-")
            atexit.register(shutil.rmtree, directory, True)
            path = Path(directory, "users")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            self._path = path
        if os.environ.get(ENV_VAR) != str(self._path):
            if os.environ.get(ENV_VAR):
                log.warning("%s pointed elsewhere; the simulated hosts own it", ENV_VAR)
            os.environ[ENV_VAR] = str(self._path)
        return self._path

    def step(self, context: Any, token: bytes, users: str) -> bytes | None:
        """``context.step(token)`` with the file holding ``users`` (see ``Accounts.ntlm_lines``)."""
        with self._lock:
            path = self._ensure_locked()
            if users != self._written:
                path.write_text(users, encoding="utf-8")
                self._written = users
            out: bytes | None = context.step(token)
            return out


USER_FILE = NtlmUserFile()
