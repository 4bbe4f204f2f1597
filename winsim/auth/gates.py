"""The authentication layer of one simulated host, as WinRM applies it to each HTTP request.

A ``Gate`` turns a request (its Authorization and Content-Type headers, its body, the TLS peer
certificate) and the state of its TCP connection into an ``Admission``: a refusal to send now,
or the plaintext SOAP body and how to send the reply back. This module holds what every gate
shares, and Basic, which checks the host's local users (over HTTP only on a host that allows
unencrypted traffic, which is what a Basic host here stands for). Negotiate is in
``winsim.auth.negotiate``, client certificates in ``winsim.auth.certificates``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from winsim.auth.accounts import Accounts
from winsim.auth.sealing import SPNEGO, SealingError

AUTH_KINDS: Final = ("basic", "negotiate", "kerberos", "certificate")


@dataclass
class Connection:
    """The authentication state of one TCP connection."""

    context: Any = None
    user: str | None = None
    protocol: str = SPNEGO

    def reset(self) -> None:
        self.context = None
        self.user = None


@dataclass
class Request:
    """What the gate reads from an HTTP request."""

    authorization: str | None
    content_type: str
    body: bytes
    # DER of the TLS client certificate, when the client presented one that the CA validated
    peer_certificate: bytes | None = None


@dataclass
class Admission:
    """A gate's decision: refuse now (``status`` not 200, or ``body`` empty), or go on with
    ``body``, the plaintext SOAP envelope."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    user: str | None = None
    sealed: bool = False
    # why a request was refused (for the host's log and counters); never a secret
    refused: str | None = None

    @property
    def bad_credentials(self) -> bool:
        return self.refused == "credentials"


class Gate(Protocol):
    kind: str

    def admit(self, request: Request, conn: Connection) -> Admission: ...

    def seal_reply(self, conn: Connection, body: bytes) -> tuple[str, bytes]: ...

    def challenge(self) -> list[tuple[str, str]]:
        """The WWW-Authenticate headers of a 401."""


def authorization_scheme(header: str | None) -> tuple[str, str]:
    """(scheme in lower case, the rest) of an Authorization header."""
    if not header:
        return "", ""
    scheme, _sep, rest = header.strip().partition(" ")
    return scheme.lower(), rest.strip()


def refuse(gate: Gate, reason: str, status: int = 401) -> Admission:
    headers = gate.challenge() if status == 401 else []
    return Admission(status=status, headers=headers, refused=reason)


@dataclass
class BasicGate:
    accounts: Accounts
    https: bool
    kind: str = "basic"

    def challenge(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", 'Basic realm="WSMAN"')]

    def admit(self, request: Request, conn: Connection) -> Admission:
        scheme, rest = authorization_scheme(request.authorization)
        if scheme != "basic":
            return refuse(self, "no credentials")
        try:
            user, _sep, password = base64.b64decode(rest, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return refuse(self, "credentials")
        if not self.accounts.check_password(user, password):
            return refuse(self, "credentials")
        return Admission(body=request.body, user=user.lower())

    def seal_reply(self, conn: Connection, body: bytes) -> tuple[str, bytes]:
        raise SealingError("Basic cannot seal messages")
