"""async_jobs.py: an ansible-rulebook event source for Ansible async jobs on Windows hosts.

Windows admins start long tasks as async jobs (``async: 3600, poll: 0``). This source polls the
hosts' async dirs over PowerShell Remoting, ONE pipeline per host per poll whatever the number of
jobs, and emits one event when a job finishes, fails, times out or is lost (watchdog gone, host
rebooted). ``connection: local`` watches this machine's own async dir instead.

The logic lives in the ``winasync_eda`` package at ``extensions/eda/winasync_eda``; this file
only loads it. The package stays out of ``plugins/event_source`` on purpose: Galaxy's importer and
ansible-rulebook take every ``.py`` file there, subfolders included, for an event source.
ansible-rulebook runs sources with ``runpy.run_path``, which puts nothing on ``sys.path``, so the
package is loaded by its location relative to this file (two folders up), under its own name.
That one rule works from an installed collection, from a checkout (``-S``), when this file is run
directly, and in the tests (which put ``extensions/eda`` on ``sys.path`` and import it first).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

DOCUMENTATION = r"""
---
short_description: Emit an event when an Ansible async job on a Windows host ends.
description:
  - Polls the async dir (C(%USERPROFILE%\.ansible_async)) of Windows hosts over PowerShell
    Remoting (pypsrp), one pipeline per host per poll whatever the number of jobs, and emits
    one event per job outcome - finished, failed, timed_out, lost (and on request running,
    vanished).
  - C(connection=local) watches this machine's own async dir (C(~/.ansible_async)) instead.
  - Survives unreachable hosts (exponential backoff, a long pause after an authentication
    failure), half-written job files (read again at the next poll) and restarts (C(state_file)).
options:
  hosts:
    description:
      - Hosts to watch. An item is a host name (also used as address) or a mapping with
        C(name) and any of C(address), C(port), C(protocol), C(username), C(password), C(auth),
        C(cert_validation), C(async_dir), C(connection), C(path).
    type: list
    elements: raw
  inventory:
    description: An Ansible inventory; its hosts (filtered by C(limit)) are watched with their
      connection vars (ansible_host, ansible_port, ansible_user, ansible_password,
      ansible_connection, ansible_psrp_*, ansible_winrm_*, ansible_async_dir).
    type: str
  limit:
    description: A host pattern applied to C(inventory).
    type: str
  username:
    description: Default user for every host.
    type: str
  password:
    description: Default password for every host. Never logged, never in an event.
    type: str
  auth:
    description: pypsrp authentication.
    type: str
    choices: [basic, certificate, credssp, kerberos, negotiate, ntlm]
    default: negotiate
  protocol:
    description: C(http) is allowed with message encryption (ntlm, kerberos, negotiate,
      credssp); Basic over plain HTTP only when both C(protocol=http) and C(auth=basic) are given.
    type: str
    choices: [https, http]
    default: https
  port:
    description: WinRM port; 5986 for https, 5985 for http.
    type: int
  cert_validation:
    description: C(true), C(false), or the path of a CA bundle.
    type: raw
    default: true
  async_dir:
    description: The async dir, expanded on the host.
    type: str
    default: '%USERPROFILE%\.ansible_async (psrp), ~/.ansible_async (local)'
  connection:
    description: C(psrp), or C(local) for this machine.
    type: str
    default: psrp
  jids:
    description: Only these job ids (the job file names, like C(j687253281342.17218)).
    type: list
    elements: str
  interval:
    description: Seconds between two polls of one host.
    type: float
    default: 15
  emit:
    description: Statuses to emit.
    type: list
    elements: str
    default: [finished, failed, timed_out, lost]
  state_file:
    description: Checkpoint file; an outcome already emitted is not emitted again after a restart.
    type: str
  checkpoint_db:
    description:
      - Keep the checkpoint in PostgreSQL instead of C(state_file), so an activation restarted
        on another node (EDA controller failover) knows what was delivered. A libpq connection
        string (C(host=... dbname=... user=...) or C(postgresql://...)), or a mapping with any
        of C(host), C(port), C(dbname), C(user), C(password), C(sslmode), C(sslrootcert),
        C(sslcert), C(sslkey), C(sslpassword) (template them from the activation's
        C(drools_db_*) variables). A mapping whose values are all empty means off.
      - One table per checkpoint id, C(winasync_checkpoint_<id>), created when missing; each
        write is one transaction. Unreachable at start stops the source with one line; later,
        writes wait and retry and nothing is lost.
    type: raw
  checkpoint_id:
    description:
      - Names the C(checkpoint_db) table (1-40 letters, digits, C(_), C(-)). Defaults to
        ansible-rulebook's C(--persistence-id), which the source reads from the engine it runs in.
    type: str
  redeliver_after:
    description: Seconds; an outcome emitted but whose job file is still there this long after
      is emitted again (its follow-up, which removes the file, evidently did not run).
    type: float
  lost_after:
    description: Seconds; a job still running this long after its file was created is lost.
    type: float
  max_output_bytes:
    description: Cap on stdout, stderr and result in an event.
    type: int
    default: 65536
  max_answer_bytes:
    description: Byte budget of one poll's answer (file contents and summaries). Job files past
      it are left for the next polls, which follow at once until the backlog is read, so a host
      with thousands of job files never needs a huge answer (WinRM ends a shell past its
      MaxMemoryPerShellMB).
    type: int
    default: 4194304
  poll_script:
    description: Absolute path, on the hosts, of the poll script deployed there (for example
      C(C:\\ProgramData\\winasync\\poll.ps1), copied by the playbook
      C(winasync.eda.deploy_poll_script) and signed by you). Each poll then runs that file by
      path instead of defining the script as a function, so hosts in Constrained Language Mode
      (App Control for Business, AppLocker) run it in FullLanguage when its signature is trusted.
      Unset, a host in Constrained Language Mode is reported C(unsupported).
    type: str
  mode:
    description: C(poll) asks each host every O(interval) seconds. C(watch) keeps one waiting
      poll in flight per host, parked on the host, which answers as soon as a job file or a
      watchdog changes (or after O(watch_wait) seconds), so an outcome arrives about a second
      after it is written and an idle host costs one pipeline per O(watch_wait). Watch mode
      holds one thread per host while its poll waits (pypsrp is synchronous).
    type: str
    choices: [poll, watch]
    default: poll
  watch_wait:
    description: Seconds one waiting poll may wait on the host (watch mode). The
      WS-Management OperationTimeout of its Receive defaults to this plus 5 s and the HTTP read
      timeout to that plus 10 s; both must stay within WinRM's MaxTimeoutms (60 s by default).
      An inventory's C(ansible_psrp_operation_timeout) / C(ansible_psrp_read_timeout) win, and
      must then be above it.
    type: float
    default: 50
  shard:
    description: C("i/n") (1 <= i <= n) to split the hosts across n activations of this source
      that differ only in i. Each keeps the hosts that rendezvous hashing on the inventory name
      gives to shard i, so every host is watched by exactly one of them, and going from n to n+1
      activations moves only about 1/(n+1) of the hosts. Unset, every host is watched.
    type: str
  max_concurrency:
    description: Hosts polled at the same time.
    type: int
    default: 32
  jitter:
    description: Fraction of C(interval) by which each host's next poll is moved at random, so
      hosts do not poll in step.
    type: float
    default: 0.1
  poll_timeout:
    description: Deadline in seconds of one poll of one host (the pipeline is stopped after it).
    type: float
    default: 60
  backoff_max:
    description: Cap in seconds of the exponential backoff of a host whose polls fail.
    type: float
    default: 300
  auth_backoff:
    description: Seconds to wait after an authentication failure before trying that host again;
      long on purpose, so that a wrong password does not lock the account out.
    type: float
    default: 900
  path:
    description: WinRM URL path.
    type: str
    default: wsman
  connection_timeout:
    description: pypsrp connection timeout in seconds.
    type: float
    default: 30
  read_timeout:
    description: pypsrp read timeout in seconds; more than C(operation_timeout).
    type: float
    default: 30
  operation_timeout:
    description: WS-Management operation timeout in seconds.
    type: int
    default: 20
  certificate_pem:
    description: Client certificate for C(auth=certificate).
    type: str
  certificate_key_pem:
    description: Key of the client certificate for C(auth=certificate).
    type: str
  negotiate_hostname_override:
    description: The host name in the Kerberos SPN (C(HTTP/<name>)) when the address is not
      that name (inventory C(ansible_psrp_negotiate_hostname_override)).
    type: str
  host_events:
    description: Also emit C(async_host) events when a host becomes unreachable or recovers.
    type: bool
    default: false
  feedback:
    description: Wait for ansible-rulebook's acknowledgement before recording an event as
      delivered (needs C(--persistence-id)).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Windows async jobs
  hosts: all
  sources:
    - winasync.eda.async_jobs:
        inventory: inventory/windows.yml
        limit: windows
        interval: 15
        state_file: /var/lib/eda/async_jobs.json
        redeliver_after: 900
  rules:
    - name: A job failed
      condition: event.async_job.status in ["failed", "timed_out", "lost"]
      action:
        run_playbook:
          name: winasync.eda.job_failed
"""

_PACKAGE = "winasync_eda"


def _load_package() -> ModuleType:
    """Import ``extensions/eda/winasync_eda`` by location: ``run_path`` gives no import path."""
    loaded = sys.modules.get(_PACKAGE)
    if loaded is not None:
        return loaded
    # .../extensions/eda/plugins/event_source/async_jobs.py -> .../extensions/eda/winasync_eda
    folder = Path(__file__).resolve().parents[2] / _PACKAGE
    spec = importlib.util.spec_from_file_location(
        _PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - only with a broken install
        raise ImportError(f"cannot load {_PACKAGE} from {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_PACKAGE]
        raise
    return module


_load_package()
from winasync_eda.source import run  # noqa: E402


async def main(queue: asyncio.Queue[Any], args: dict[str, Any]) -> None:
    """Watch the hosts in ``args`` and put one event per job outcome on ``queue``."""
    await run(queue, args)


if __name__ == "__main__":
    # Run directly: print the events. Arguments as JSON or YAML in argv[1], e.g.
    #   python async_jobs.py '{"hosts": [{"name": "localhost", "connection": "local"}], "interval": 2}'
    import contextlib
    import json
    import logging

    import yaml

    class MockQueue(asyncio.Queue[Any]):
        """A queue that prints what is put on it."""

        async def put(self, event: Any) -> None:
            print(json.dumps(event, indent=2, sort_keys=True), flush=True)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cli_args = (
        yaml.safe_load(sys.argv[1])
        if len(sys.argv) > 1
        else {
            "hosts": [{"name": "localhost", "connection": "local"}],
            "interval": 2,
        }
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(MockQueue(), cli_args))
