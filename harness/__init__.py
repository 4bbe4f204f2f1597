"""Test plumbing: what runs the product and the simulated Windows host for the tests, the demo
and the benchmarks. Not part of the collection (``galaxy.yml`` leaves it out of the build), and
not part of the simulated host: ``winsim/`` never imports it.

- ``process``: the one helper for child processes (own process group, a marker in the
  environment, stop ends the whole tree) and the ``with`` boilerplate;
- ``rulebook``: a real ``ansible-rulebook`` run;
- ``sim_process``: simulated hosts in a process of their own (``python -m winsim serve``);
- ``sim_thread``: a simulated-host server on its own event loop in a thread of this process;
- ``postgres``: a throwaway PostgreSQL cluster (initdb + pg_ctl, unprivileged, loopback);
- ``failover``: a chain of ansible-rulebook nodes on one PostgreSQL, SIGKILLed and taken over.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The root of this checkout."""
