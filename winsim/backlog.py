"""A backlog of finished job files, as a host collects them when nobody cleans up.

Ansible never deletes the files of ``poll: 0`` jobs, so a host can hold thousands. This writes
them directly (no scripted job behind them): each is the final file the watchdog would have
written, with its own jid and a watchdog pid that no longer runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from winsim.jobfiles import Generation, encode_final, final_record, initial_record

if TYPE_CHECKING:
    from winsim.host import SimHost

FIRST_JID = 100_000_000_000


def write_backlog(
    host: SimHost,
    count: int,
    file_bytes: int,
    *,
    generation: Generation = "2.19-ps51",
    rc_every: int = 0,
) -> list[str]:
    """Write ``count`` finished job files of about ``file_bytes`` each; their names, in order.

    With ``rc_every`` = n, every n-th job failed with rc 2 (the others finished with rc 0).
    """
    expanded, local_dir = host.local_async_dir()
    if local_dir is None:
        raise ValueError(f"async dir {expanded!r} is not on this host's C: drive")
    names: list[str] = []
    for i in range(count):
        name = f"j{FIRST_JID + i}.{host.session_pid}"
        failed = rc_every > 0 and i % rc_every == 0
        initial = initial_record(name, f"{expanded}\\{name}", 70_000 + 4 * i, generation)
        result = {
            "changed": True,
            "rc": 2 if failed else 0,
            "stdout": "",
            "stderr": "",
            **({"failed": True, "msg": "non-zero return code"} if failed else {}),
        }
        empty = len(
            encode_final(
                final_record(initial, result, generation), generation, codepage=host.ansi_encoding
            )
        )
        result["stdout"] = "o" * max(0, file_bytes - empty)
        host.write_file(
            local_dir / name,
            encode_final(
                final_record(initial, result, generation), generation, codepage=host.ansi_encoding
            ),
        )
        names.append(name)
    return names
