"""What the two PSRP backends (pypsrp's threads, ``psrp``; asyncio's, ``aio_psrp``) share: how
a failed poll is told, and the rules of their arguments.

Both backends name a failure by the same kinds ("connection error", "WSMan fault",
"authentication failed", "pipeline failed", ...) and raise the same classes from ``base``, so
the scheduler's retry and backoff, the logs and the host events do not depend on the backend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..secret import scrub
from .base import AuthenticationFailed, HostUnsupported, TransportError
from .poll_wire import unsupported_reason


class PipelineFailedError(Exception):
    """The pipeline failed or wrote to the error stream."""


class ClosedError(Exception):
    """close() ran while a poll waited for its turn."""


class DeadlineError(Exception):
    """The pipeline ran past the poll's deadline and was stopped."""


def transport_error(
    host: str,
    kind: str,
    text: str,
    secrets: Sequence[str],
    logger: logging.Logger,
    *,
    auth: bool = False,
    pipeline_failed: bool = False,
) -> TransportError:
    """A TransportError naming the host and the kind of failure, with a scrubbed text; logged
    at DEBUG (WARNING for an unexpected one: a bug)."""
    text = scrub(text, secrets)
    message = f"{host}: {kind}" + (f": {text}" if text else "")
    level = logging.WARNING if kind.startswith("unexpected") else logging.DEBUG
    logger.log(level, "PSRP poll failed: %s", message)
    reason = unsupported_reason(text) if pipeline_failed else None
    if reason is not None:
        return HostUnsupported(f"{host}: unsupported: {reason}", reason)
    return AuthenticationFailed(message) if auth else TransportError(message)


def first_error(texts: Sequence[str], state: object) -> str:
    """A failed pipeline in one line: its first error record, and how many more there were."""
    if not texts:
        return f"pipeline state {state}"
    more = f" (and {len(texts) - 1} more)" if len(texts) > 1 else ""
    return texts[0] + more


def check_arguments(host: str, call_deadline_s: float, idle_timeout: int | None) -> None:
    """A transport's own arguments (not the host's settings): ValueError when out of range."""
    if call_deadline_s <= 0:
        raise ValueError(f"host {host!r}: call_deadline_s must be positive")
    if idle_timeout is not None and idle_timeout < 60:
        raise ValueError(
            f"host {host!r}: idle_timeout must be at least 60 seconds (the endpoint's minimum)"
        )
