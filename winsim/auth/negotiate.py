"""Negotiate as WinRM does it, through pyspnego's acceptor: NTLM, and Kerberos with a keytab.

- The logon is bound to the TCP connection: the handshake runs over 401 replies on one
  connection, the last leg gets a 200 carrying the final token, and the requests after it carry
  no Authorization header. A new handshake on the connection starts over.
- Over HTTP, bodies must be sealed (``AllowUnencrypted=false``): an unsealed SOAP body is refused
  with 401; the reply to a sealed request is sealed with the same context.
- Over HTTPS, the logon is checked against the channel binding of the host's certificate
  (``CbtHardeningLevel`` Strict: a missing binding is refused as well as a wrong one).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any

import spnego
from spnego.channel_bindings import GssChannelBindings

from winsim.auth.accounts import Accounts
from winsim.auth.bindings import ntlm_binding_present
from winsim.auth.gates import Admission, Connection, Request, authorization_scheme, refuse
from winsim.auth.ntlm_store import USER_FILE
from winsim.auth.sealing import SPNEGO, SealingError, is_sealed, protocol_of, seal, unseal

log = logging.getLogger(__name__)


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
        scheme, rest = authorization_scheme(request.authorization)
        final: list[tuple[str, str]] = []
        if scheme in ("negotiate", "kerberos") and rest:
            step = self._step(scheme, rest, conn)
            if isinstance(step, Admission):
                return step
            final = step
        elif conn.user is None:
            return refuse(self, "credentials" if scheme else "no credentials")
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
            return refuse(self, "unencrypted")
        return Admission(body=request.body, headers=final, user=conn.user)

    def _step(self, scheme: str, rest: str, conn: Connection) -> Admission | list[tuple[str, str]]:
        """One handshake leg: a 401 to send, or the final headers once the user is logged on."""
        try:
            token = base64.b64decode(rest, validate=True)
        except binascii.Error:
            conn.reset()
            return refuse(self, "credentials")
        if conn.context is None or conn.user is not None:
            conn.reset()  # a new handshake on this connection starts from scratch
            conn.context = self._acceptor()
        try:
            out = USER_FILE.step(conn.context, token, self.accounts.ntlm_lines(self.machine))
        except Exception as exc:
            # a wrong password, an unknown user, a wrong channel binding, a ticket for another
            # service (SpnegoError), or a token the library chokes on (gssapi raised an
            # AttributeError for a Kerberos ticket with a wrong binding): a refusal, never a 500
            log.info("%s: authentication refused (%s)", self.machine, type(exc).__name__)
            conn.reset()
            return refuse(self, "credentials")
        header = scheme.capitalize()
        if not conn.context.complete:
            token_out = base64.b64encode(out or b"").decode()
            return Admission(status=401, headers=[("WWW-Authenticate", f"{header} {token_out}")])
        if self.https and ntlm_binding_present(token) is False:
            log.info("%s: refused NTLM without a channel binding", self.machine)
            conn.reset()
            return refuse(self, "channel binding")
        if not self._ticket_is_for_this_host(conn.context):
            log.info("%s: refused a Kerberos ticket for another service", self.machine)
            conn.reset()
            return refuse(self, "credentials")
        principal = str(conn.context.client_principal or "")
        user = self.accounts.local_user(principal, self.machine)
        if user is None:
            log.info("%s: %s is not a user of this host", self.machine, principal)
            conn.reset()
            return refuse(self, "credentials")
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
        service, _sep, rest = target.partition("/")
        name = rest.split("@")[0].lower()
        return service.lower() in ("http", "host") and name == self.service_host.lower()

    def seal_reply(self, conn: Connection, body: bytes) -> tuple[str, bytes]:
        return seal(conn.context, conn.protocol, body)


def _kerberos_target(context: Any) -> str | None:
    """The service principal a Kerberos ticket was issued for, from the gssapi context under
    pyspnego's proxies (pyspnego has no public accessor for it)."""
    inner = context
    for _attempt in range(3):
        target = getattr(inner, "target_name", None)
        if target is not None and not callable(target):
            return str(target)
        inner = getattr(inner, "_context", None)
        if inner is None:
            return None
    return None
