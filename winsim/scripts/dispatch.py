"""The executor: recognise a pipeline's script and carry out its meaning on the host.

Recognition is by the poll script's marker (or its define script's marker, or a call of the
function it defines), by the input structure of ansible's exec payload, or by ansible's temp dir
removal; anything else fails the pipeline, naming what came.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from winsim.api import PipelineRequest, PipelineResult
from winsim.scripts import ansible_exec, poll

if TYPE_CHECKING:
    from winsim.host import SimHost

log = logging.getLogger(__name__)

DESCRIPTION_CHARS = 120


def describe(request: PipelineRequest) -> str:
    """A short description of a pipeline for an error: its first non-empty line."""
    if not request.commands:
        return "(empty pipeline)"
    first = request.first
    if not first.is_script:
        return f"command {first.text}"
    for line in first.text.lstrip("\ufeff").splitlines():
        if line.strip():
            text = line.strip()
            return text if len(text) <= DESCRIPTION_CHARS else text[: DESCRIPTION_CHARS - 3] + "..."
    return "(empty script)"


async def execute(host: SimHost, request: PipelineRequest) -> PipelineResult:
    """``winsim.api.Executor``: called by the protocol layer on the server's event loop."""
    if host.loop is None:
        host.attach_loop(asyncio.get_running_loop())
    if not request.commands:
        return PipelineResult.failure("winsim: script not simulated: (empty pipeline)")
    first = request.first
    try:
        if first.is_script and poll.is_define_script(first.text):
            return PipelineResult()
        if poll.is_poll_command(first) or (first.is_script and poll.is_poll_script(first.text)):
            return await poll.run_poll(host, first.named())
        by_path = await poll.run_script_file(host, first)
        if by_path is not None:
            return by_path
        payload = ansible_exec.parse_exec_payload(request)
        if payload is not None:
            return await ansible_exec.run_exec(host, payload)
        if first.is_script and len(request.commands) == 1:
            removed = ansible_exec.remove_temp_dir(host, first.text)
            if removed is not None:
                return removed
    except OSError as exc:
        log.warning("host %s: %s failed: %s", host.name, describe(request), exc)
        return PipelineResult.failure(f"winsim: {type(exc).__name__}: {exc}")
    log.info("host %s: script not simulated: %s", host.name, describe(request))
    return PipelineResult.failure(f"winsim: script not simulated: {describe(request)}")
