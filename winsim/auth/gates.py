"""The authentication layer of one simulated host, as WinRM applies it to each HTTP request.

A ``Gate`` turns a request (its Authorization and Content-Type headers, its body, the TLS peer
certificate) and the state of its TCP connection into an ``Admission``: a refusal to send now,
or the plaintext SOAP body and how to send the reply back. Windows behaviour reproduced:

- Negotiate (NTLM, or Kerberos with a keytab) is bound to the TCP connection: the handshake runs
  over 401 replies on one connection, the last leg gets a 200 carrying the final token, and the
  requests after it carry no Authorization header. A new handshake on the connection starts over.
- Over HTTP, bodies must be sealed (``AllowUnencrypted=false``): an unsealed SOAP body is refused
  with 401; the reply to a sealed request is sealed with the same context.
- Over HTTPS, Negotiate is checked against the channel binding of the host's certificate
  (``CbtHardeningLevel`` Strict: a missing binding is refused as well as a wrong one).
- Basic checks the host's local users (over HTTP only on a host that allows unencrypted traffic,
  which is what a Basic host here stands for); a client certificate maps to a local user by its
  UPN and must be issued for client authentication by the host's CA.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import spnego
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from spnego.channel_bindings import GssChannelBindings
from spnego.exceptions import SpnegoError

from winsim.auth.accounts import Accounts
from winsim.auth.bindings import ntlm_binding_present
from winsim.auth.ntlm_store import USER_FILE
from winsim.auth.sealing import SPNEGO, SealingError, is_sealed, protocol_of, seal, unseal

log = logging.getLogger(__name__)

AUTH_KINDS: Final = ("basic", "negotiate", "kerberos", "certificate")
CERTIFICATE_AUTHORIZATION: Final = (
    "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"
)
_UPN_OID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


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
        ...


def _authorization(header: str | None) -> tuple[str, str]:
    """(scheme in lower case, the rest) of an Authorization header."""
    if not header:
        return "", ""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), rest.strip()


def _refuse(gate: Gate, reason: str, status: int = 401) -> Admission:
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
        scheme, rest = _authorization(request.authorization)
        if scheme != "basic":
            return _refuse(self, "no credentials")
        try:
            user, _, password = base64.b64decode(rest, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return _refuse(self, "credentials")
        if not self.accounts.check_password(user, password):
            return _refuse(self, "credentials")
        return Admission(body=request.body, user=user.lower())

    def seal_reply(self, conn: Connection, body: bytes) -> tuple[str, bytes]:
        raise SealingError("Basic cannot seal messages")


@dataclass
class NegotiateGate:
    """Negotiate through pyspnego's acceptor: NTLM always, Kerberos when ``service_host`` is set
    (the host's name in its ``HTTP/<name>`` principal, whose key is in the process's keytab)."""

    accounts: Accounts
    machine: str
    https: bool
    # the tls-server-end-point binding of the host's certificate (HTTPS)
    bindings: bytes | None = None
    service_host: str | None = None
    kind: str = "negotiate"

    def challenge(self) -> list[tuple[str, str]]:
        headers = [("WWW-Authenticate", "Negotiate")]
        if self.service_host:
            headers.append(("WWW-Authenticate", "Kerberos"))
        return headers

    def _acceptor(self) -> Any:
        USER_FILE.ensure()
        bindings = GssChannelBindings(application_data=self.bindings) if self.bindings else None
        # pyspnego's own SPNEGO: its NTLM, and Kerberos through gssapi when a ticket comes
        # (the acceptor then reads the keytab of KRB5_KTNAME)
        return spnego.server(
            hostname=self.service_host or self.machine,
            service="HTTP",
            channel_bindings=bindings,
            protocol="negotiate",
            options=spnego.NegotiateOptions.use_negotiate,
        )

    def admit(self, request: Request, conn: Connection) -> Admission:
        scheme, rest = _authorization(request.authorization)
        final: list[tuple[str, str]] = []
        if scheme in ("negotiate", "kerberos") and rest:
            step = self._step(scheme, rest, conn)
            if isinstance(step, Admission):
                return step
            final = step
        elif conn.user is None:
            return _refuse(self, "credentials" if scheme else "no credentials")
        if is_sealed(request.content_type):
            protocol = protocol_of(request.content_type) or SPNEGO
            try:
                plain = unseal(conn.context, request.content_type, request.body)
            except SealingError as exc:
                # e.g. a body sealed for the context of a connection that was closed since
                log.info("%s: refused a sealed request: %s", self.machine, exc)
                return Admission(status=500, headers=final, refused="undecryptable")
            conn.protocol = protocol
            return Admission(body=plain, headers=final, user=conn.user, sealed=True)
        if request.body and not self.https:
            conn.reset()
            return _refuse(self, "unencrypted")
        return Admission(body=request.body, headers=final, user=conn.user)

    def _step(self, scheme: str, rest: str, conn: Connection) -> Admission | list[tuple[str, str]]:
        """One handshake leg: a 401 to send, or the final headers once the user is logged on."""
        try:
            token = base64.b64decode(rest, validate=True)
        except binascii.Error:
            conn.reset()
            return _refuse(self, "credentials")
        if conn.context is None or conn.user is not None:
            conn.reset()  # a new handshake on this connection starts from scratch
            conn.context = self._acceptor()
        try:
            out = USER_FILE.step(conn.context, token, self.accounts.ntlm_lines(self.machine))
        except SpnegoError as exc:
            # a wrong password, an unknown user, a wrong channel binding, a ticket for another
            # service: pyspnego's message names the cause, never the secret
            log.info("%s: authentication refused (%s)", self.machine, type(exc).__name__)
            conn.reset()
            return _refuse(self, "credentials")
        header = scheme.capitalize()
        if not conn.context.complete:
            token_out = base64.b64encode(out or b"").decode()
            return Admission(status=401, headers=[("WWW-Authenticate", f"{header} {token_out}")])
        if self.https and ntlm_binding_present(token) is False:
            log.info("%s: refused NTLM without a channel binding", self.machine)
            conn.reset()
            return _refuse(self, "channel binding")
        if not self._ticket_is_for_this_host(conn.context):
            log.info("%s: refused a Kerberos ticket for another service", self.machine)
            conn.reset()
            return _refuse(self, "credentials")
        principal = str(conn.context.client_principal or "")
        user = self.accounts.local_user(principal, self.machine)
        if user is None:
            log.info("%s: %s is not a user of this host", self.machine, principal)
            conn.reset()
            return _refuse(self, "credentials")
        conn.user = user
        return [("WWW-Authenticate", f"{header} {base64.b64encode(out).decode()}")] if out else []

    def _ticket_is_for_this_host(self, context: Any) -> bool:
        """NTLM: nothing to check. Kerberos: the ticket's service is HTTP/ or host/ of this
        host (the acceptor reads a keytab that holds every host's keys)."""
        if context.negotiated_protocol != "kerberos":
            return True
        if not self.service_host:
            return False
        target = _kerberos_target(context)
        if target is None:
            return False
        service, _, rest = target.partition("/")
        name = rest.split("@")[0].lower()
        return service.lower() in ("http", "host") and name == self.service_host.lower()

    def seal_reply(self, conn: Connection, body: bytes) -> tuple[str, bytes]:
        return seal(conn.context, conn.protocol, body)


def _kerberos_target(context: Any) -> str | None:
    """The service principal a Kerberos ticket was issued for, from the gssapi context under
    pyspnego's proxies (pyspnego has no public accessor for it)."""
    inner = context
    for _ in range(3):
        target = getattr(inner, "target_name", None)
        if target is not None and not callable(target):
            return str(target)
        inner = getattr(inner, "_context", None)
        if inner is None:
            return None
    return None


@dataclass
class CertificateGate:
    """TLS client certificates (HTTPS only): the TLS layer has checked the chain against the
    host's CA; here the certificate must be for client authentication and map to a user."""

    accounts: Accounts
    kind: str = "certificate"

    def challenge(self) -> list[tuple[str, str]]:
        return [
            (
                "WWW-Authenticate",
                "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual",
            )
        ]

    def admit(self, request: Request, conn: Connection) -> Admission:
        if (request.authorization or "").strip() != CERTIFICATE_AUTHORIZATION:
            return _refuse(self, "no credentials")
        if request.peer_certificate is None:
            return _refuse(self, "credentials")
        upn = certificate_upn(request.peer_certificate)
        user = self.accounts.certificates.get(upn.lower()) if upn else None
        if user is None:
            log.info("certificate for %r is not mapped to a user of this host", upn)
            return _refuse(self, "credentials")
        return Admission(body=request.body, user=user)

    def seal_reply(self, conn: Connection, body: bytes) -> tuple[str, bytes]:
        raise SealingError("certificate auth cannot seal messages")


def certificate_upn(der: bytes) -> str | None:
    """The UPN of a client certificate issued for client authentication, or None."""
    try:
        cert = x509.load_der_x509_certificate(der)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            return None
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for other in names.get_values_for_type(x509.OtherName):
        if other.type_id == _UPN_OID:
            return _der_utf8(other.value)
    return None


def _der_utf8(value: bytes) -> str | None:
    """A DER UTF8String (tag 12, short length form: a UPN is shorter than 128 bytes)."""
    if len(value) < 2 or value[0] != 0x0C or value[1] >= 0x80 or len(value) != 2 + value[1]:
        return None
    try:
        return value[2:].decode("utf-8")
    except UnicodeDecodeError:
        return None
