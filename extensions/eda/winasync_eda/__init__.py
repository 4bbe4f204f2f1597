"""The watcher behind the ``winasync.eda.async_jobs`` event source.

The plugin file stays thin; this package holds the logic, one concern per module. Read
``source`` first: it wires all the others together. The public names (arguments, statuses,
event keys) are listed in ``docs/contract.md``.

- ``source``: the source's lifetime (check arguments, one transport per host, poll, shut down);
- ``config``: the arguments, checked at start (``checks``: single values; ``hosts``: one
  settings object per host; ``inventory``: hosts from an Ansible inventory);
- ``settings``: ``HostSettings``, how to reach one host, with every per-host default and rule;
- ``secret``: every secret masking (the ``Secret`` wrapper, scrubbing foreign error texts);
- ``model``: the job statuses and what a job file name looks like;
- ``classify``: job file bytes to a status; ``events``: the event shape, bounded;
- ``tracker``: what is new on one host between polls (lost, vanished);
- ``scheduler``: when each host is polled, backoff, cycle summaries;
- ``delivery`` and ``checkpoint``: the queue side, exactly once across restarts;
- ``transports``: ``psrp`` (pypsrp and ``poll.ps1``), ``local`` (this machine), ``base`` (what
  a poll asks and returns).

Where to add:

- a source argument: the list of places is in ``config``'s docstring;
- a status: ``model.Status`` and ``docs/contract.md``, then ``classify`` (how it is decided) and
  ``tracker`` (when it is reached);
- a simulated Windows behaviour: ``winsim/`` at the repository root (its README section);
- a benchmark: a module of ``bench/`` that returns one section of ``latest.json``, called from
  ``bench/__main__.py`` (a soak: ``bench/soak.py``); new JSON keys go to ``docs/contract.md``.
"""

__version__ = "1.2.0"
