"""The watcher behind the ``winasync.eda.async_jobs`` event source.

The plugin file stays thin; this package holds the logic, one concern per module:
``config`` (arguments and inventory), ``classify`` (job files to statuses), ``events`` (the
event shape), ``tracker`` (what is new on one host), ``scheduler`` (when each host is polled),
``checkpoint`` and ``delivery`` (exactly-once across restarts), ``transports`` (PSRP and local).
"""

__version__ = "1.1.0"
