"""Every secret masking of the source, in one place.

A password is held in :class:`Secret`, whose every text form is masked. Texts that come from
elsewhere (an argument check's message, ansible's templating error, an exception of pypsrp or
requests) may still carry a secret: :func:`mask` and :func:`scrub` take them out before the
text is logged, raised or emitted.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, urlsplit

MASK: Final = "********"
# how much of a foreign error text (an exception of pypsrp or requests) a message keeps
MAX_TEXT: Final = 300
_URL_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s]*@")


class Secret:
    """Holds a secret value; every text form of it is masked, only ``reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


def mask(text: str, secrets: Iterable[str], *, min_length: int = 1) -> str:
    """``text`` with every secret of at least ``min_length`` characters masked, longest first
    (so a secret that contains another is masked whole)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= min_length:
            text = text.replace(secret, MASK)
    return text


def secret_forms(
    password: Secret | None, username: str | None = None, proxy: str | None = None
) -> tuple[str, ...]:
    """Every form in which a password could show up in an exception text: as it is, URL-quoted,
    inside a Basic auth header, and the password of a proxy URL."""
    forms: list[str] = []
    if password is not None and password.reveal():
        value = password.reveal()
        forms += [value, quote(value, safe=""), quote(value)]
        basic = f"{username or ''}:{value}".encode()
        forms.append(base64.b64encode(basic).decode("ascii"))
    if proxy:
        try:
            proxy_password = urlsplit(proxy).password
        except ValueError:
            proxy_password = None
        if proxy_password:
            forms.append(proxy_password)
    return tuple(sorted(set(forms), key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """A foreign error text made fit for a log line: secrets and URL credentials masked,
    whitespace flattened, the length bounded."""
    text = _URL_USERINFO.sub(r"\1***@", mask(text, secrets))
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."
