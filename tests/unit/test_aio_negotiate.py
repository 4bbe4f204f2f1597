"""The MIME framing of WinRM message encryption and the HTTP reading of ``aio_negotiate``: the
bytes pypsrp writes, what the simulated host (as Windows) writes read back, and a body that
does not unseal refused, never passed on."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import struct

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from pypsrp.encryption import WinRMEncryption
from winasync_eda.transports.aio_negotiate import (
    SPNEGO,
    SealError,
    _read_reply,
    end_point_binding,
    seal,
    unseal,
)

from winsim.auth import sealing as sim_sealing

PLAIN = b"<s:Envelope>" + "héllo".encode() * 50 + b"</s:Envelope>"


class XorContext:
    """A stand-in security context: a 16-byte signature and XOR-sealed data."""

    def __init__(self, key: int = 0x5A) -> None:
        self.key = key

    def wrap_winrm(self, data: bytes) -> tuple[bytes, bytes, int]:
        return hashlib.md5(data).digest(), bytes(b ^ self.key for b in data), 0

    def unwrap_winrm(self, header: bytes, data: bytes) -> bytes:
        plain = bytes(b ^ self.key for b in data)
        if hashlib.md5(plain).digest() != header:
            raise ValueError("bad signature")
        return plain


def test_a_sealed_body_is_byte_for_byte_what_pypsrp_writes() -> None:
    content_type, body = seal(XorContext(), SPNEGO, PLAIN)
    pypsrp_type, pypsrp_body = WinRMEncryption(XorContext(), SPNEGO).wrap_message(PLAIN)
    assert body == pypsrp_body
    assert content_type.startswith(pypsrp_type)
    assert f'protocol="{SPNEGO}"' in content_type
    assert 'boundary="Encrypted Boundary"' in content_type


def test_the_hosts_sealed_reply_unseals_and_the_host_reads_ours() -> None:
    content_type, body = sim_sealing.seal(XorContext(), SPNEGO, PLAIN)
    assert content_type.startswith("multipart/encrypted")
    assert unseal(XorContext(), body) == PLAIN
    ours_type, ours = seal(XorContext(), SPNEGO, PLAIN)
    assert sim_sealing.unseal(XorContext(), ours_type, ours) == PLAIN


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b.replace(b"Length=", b"Lenght="),
        lambda b: b[:-5],
        lambda b: b.replace(b"application/octet-stream", b"text/plain"),
        lambda b: b.replace(str(len(PLAIN)).encode(), str(len(PLAIN) + 1).encode(), 1),
        lambda b: b[: b.index(b"application/octet-stream") + 30] + b"--Encrypted Boundary--\r\n",
    ],
    ids=["no-length", "cut", "no-octets-part", "wrong-length", "too-short"],
)
def test_a_damaged_reply_is_refused(damage: object) -> None:
    body = seal(XorContext(), SPNEGO, PLAIN)[1]
    with pytest.raises(SealError):
        unseal(XorContext(), damage(body))  # type: ignore[operator]


def test_a_reply_sealed_with_other_keys_is_refused() -> None:
    body = seal(XorContext(0x11), SPNEGO, PLAIN)[1]
    with pytest.raises(SealError, match="does not unseal"):
        unseal(XorContext(0x22), body)


def test_a_signature_length_out_of_range_is_refused() -> None:
    body = seal(XorContext(), SPNEGO, PLAIN)[1]
    start = body.index(b"octet-stream\r\n") + len(b"octet-stream\r\n")
    damaged = body[:start] + struct.pack("<i", 10**6) + body[start + 4 :]
    with pytest.raises(SealError, match="out of range"):
        unseal(XorContext(), damaged)


def _certificate(algorithm: hashes.SHA256 | hashes.SHA384) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "win01")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )

    return certificate.public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [(hashes.SHA256(), hashlib.sha256), (hashes.SHA384(), hashlib.sha384)],
    ids=["sha256", "sha384"],
)
def test_the_channel_binding_hashes_the_certificate_with_its_signature_hash(
    algorithm: hashes.SHA256 | hashes.SHA384, digest: object
) -> None:
    der = _certificate(algorithm)
    expected = b"tls-server-end-point:" + digest(der).digest()  # type: ignore[operator]
    assert end_point_binding(der) == expected


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_a_reply_with_a_content_length() -> None:
    reply = (
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\n"
        b"WWW-Authenticate: Negotiate TlRMTQ==\r\nContent-Length: 3\r\n\r\nabcNEXT"
    )
    status, headers, body = await _read_reply(_reader(reply))
    assert (status, body) == (401, b"abc")
    # of two challenges, the one carrying a token
    assert headers["www-authenticate"] == "Negotiate TlRMTQ=="


async def test_a_chunked_reply() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    status, headers, body = await _read_reply(_reader(reply))
    assert (status, body, "transfer-encoding" in headers) == (200, b"abcdefg", True)


async def test_a_reply_without_a_length_runs_to_the_close() -> None:
    status, headers, body = await _read_reply(_reader(b"HTTP/1.0 200 OK\r\n\r\nall of it"))
    assert (status, body, headers["connection"]) == (200, b"all of it", "close")
