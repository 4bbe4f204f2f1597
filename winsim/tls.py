"""A throw-away certificate authority, so clients talk HTTPS to simulated hosts with validation ON.

EC P-256 keys keep generation cheap (milliseconds), which matters when a test suite starts many
servers.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
_VALIDITY = datetime.timedelta(days=30)
# szOID_NT_PRINCIPAL_NAME: the UPN in a certificate's subject alternative name
UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


class CertificateAuthority:
    """A CA key and self-signed certificate held in memory; it signs server certificates."""

    def __init__(self, common_name: str = "winsim test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_bundle(self, path: str | Path) -> Path:
        """Write the CA certificate (PEM): the file a client passes as ``cert_validation``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.cert_pem)
        return target

    def issue(self, names: Iterable[str] = DEFAULT_NAMES) -> tuple[bytes, bytes]:
        """A server certificate and its key (both PEM) for these DNS names and IP addresses."""
        names = list(dict.fromkeys(names))
        if not names:
            raise ValueError("a server certificate needs at least one name")
        sans: list[x509.GeneralName] = []
        for item in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(item)))
            except ValueError:
                sans.append(x509.DNSName(item))
        return self._leaf(names[0], sans, ExtendedKeyUsageOID.SERVER_AUTH)

    def _leaf(
        self, common_name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier
    ) -> tuple[bytes, bytes]:
        """A certificate signed by this CA and its new key (both PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def server_context(self, names: Iterable[str] = DEFAULT_NAMES) -> ssl.SSLContext:
        """A server-side SSLContext presenting a fresh certificate for ``names``."""
        return self.server_identity(names)[0]

    def server_identity(
        self, names: Iterable[str] = DEFAULT_NAMES, *, client_certificates: bool = False
    ) -> tuple[ssl.SSLContext, bytes]:
        """A server-side SSLContext and the DER of the certificate it presents (for channel
        binding). With ``client_certificates`` it asks clients for a certificate and validates
        one against this CA (a client without one still connects: the host then refuses it)."""
        cert_pem, key_pem = self.issue(names)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if client_certificates:
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cadata=self.cert_pem.decode("ascii"))
        # load_cert_chain only reads files: keep them just long enough to load
        with tempfile.TemporaryDirectory(prefix="winsim-tls-") as tmp:
            cert_file = Path(tmp, "cert.pem")
            key_file = Path(tmp, "key.pem")
            cert_file.write_bytes(cert_pem + self.cert_pem)
            key_file.write_bytes(key_pem)
            key_file.chmod(0o600)
            context.load_cert_chain(cert_file, key_file)
        der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
        return context, der

    def issue_client(self, upn: str, *, client_auth: bool = True) -> tuple[bytes, bytes]:
        """A client certificate and its key (both PEM) whose SAN carries the UPN ``upn``, as
        WinRM's certificate mapping reads it (``ansible@localhost``)."""
        value = upn.encode("utf-8")
        if len(value) > 127:
            raise ValueError("a UPN this long is not supported")
        san = x509.OtherName(UPN_OID, bytes([0x0C, len(value)]) + value)  # DER UTF8String
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client_auth else ExtendedKeyUsageOID.SERVER_AUTH
        return self._leaf(upn.split("@")[0], [san], usage)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
