"""TLS client certificates (WinRM's ``Auth\\Certificate``), mapped to a local user by UPN."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from winsim.auth.accounts import Accounts
from winsim.auth.gates import Admission, Connection, Request, refuse
from winsim.auth.sealing import SealingError
from winsim.tls import UPN_OID

log = logging.getLogger(__name__)

CERTIFICATE_AUTHORIZATION: Final = (
    "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"
)


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
            return refuse(self, "no credentials")
        if request.peer_certificate is None:
            return refuse(self, "credentials")
        upn = certificate_upn(request.peer_certificate)
        user = self.accounts.certificates.get(upn.lower()) if upn else None
        if user is None:
            log.info("certificate for %r is not mapped to a user of this host", upn)
            return refuse(self, "credentials")
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
        if other.type_id == UPN_OID:
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
