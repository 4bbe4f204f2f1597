"""Scan what a run showed (logs, events, command output) for secrets in any form they could
take there: as given, base64, hex, URL-quoted. A failure names the secret, never its value."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from urllib.parse import quote


def forms(secret: str | bytes) -> set[str]:
    raw = secret.encode() if isinstance(secret, str) else secret
    found = {base64.b64encode(raw).decode(), raw.hex(), raw.hex().upper()}
    if isinstance(secret, str):
        found |= {secret, quote(secret, safe="")}
    # a key or a long secret may be cut into lines: its first 16 bytes in base64 are enough
    if len(raw) > 24:
        found.add(base64.b64encode(raw[:18]).decode())
    return {f for f in found if len(f) >= 8}


def assert_not_shown(shown: Iterable[str], secrets: Mapping[str, str | bytes]) -> None:
    text = "\n".join(shown)
    leaked = [label for label, secret in secrets.items() if any(f in text for f in forms(secret))]
    assert not leaked, f"secrets shown: {', '.join(leaked)}"


def pem_body(pem: bytes) -> bytes:
    """The DER inside a PEM block (a private key's bytes, as a leak would show them)."""
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return base64.b64decode(b"".join(lines))
