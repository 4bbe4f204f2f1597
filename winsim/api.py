"""The seam between the protocol layer (WSMan/PSRP server) and what a host does with a pipeline.

The protocol side (``server``, ``wsman``, ``psrp_session``) turns a PSRP pipeline into a
``PipelineRequest`` and sends back a ``PipelineResult``; the host side (``host``, ``scripts``)
never sees HTTP, SOAP or PSRP messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from winsim.host import SimHost


@dataclass(frozen=True)
class Command:
    """One command of a pipeline: a script text (AddScript) or a cmdlet name (AddCommand)."""

    text: str
    is_script: bool
    # named parameters in order; a positional argument has the name None
    parameters: list[tuple[str | None, Any]] = field(default_factory=list)

    def named(self) -> dict[str, Any]:
        return {k: v for k, v in self.parameters if k is not None}


@dataclass(frozen=True)
class PipelineRequest:
    commands: list[Command]
    # pipeline input objects, in order (ansible's psrp connection sends its exec payload here)
    input: list[Any] = field(default_factory=list)

    @property
    def first(self) -> Command:
        return self.commands[0]


@dataclass
class PipelineResult:
    output: list[Any] = field(default_factory=list)
    # error records (non-terminating errors, or the terminating one when failed)
    errors: list[str] = field(default_factory=list)
    # the pipeline ends in the Failed state (pypsrp: had_errors)
    failed: bool = False
    # the host's SetShouldExit call, sent before the pipeline completes (None: not called)
    exit_code: int | None = None

    @classmethod
    def failure(cls, message: str) -> PipelineResult:
        return cls(errors=[message], failed=True)


# What the protocol layer calls for every pipeline, on the server's event loop.
Executor = Callable[["SimHost", PipelineRequest], Awaitable[PipelineResult]]
