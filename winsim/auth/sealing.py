"""WinRM message encryption over HTTP: SOAP bodies sealed with the connection's security context.

The MIME layout is MS-WSMV 2.2.9.1 as pypsrp and Windows write it: one ``multipart/encrypted``
body of two parts, a header part naming the protocol and the plaintext length, and an
``application/octet-stream`` part holding a 4-byte little-endian signature length, the signature
and the sealed bytes. (CredSSP's 16 KiB chunked form is not simulated.)
"""

from __future__ import annotations

import re
import struct
from typing import Any, Final

SPNEGO: Final = "application/HTTP-SPNEGO-session-encrypted"
KERBEROS: Final = "application/HTTP-Kerberos-session-encrypted"
PROTOCOLS: Final = (SPNEGO, KERBEROS)
_BOUNDARY: Final = "Encrypted Boundary"
_LENGTH = re.compile(
    rb"OriginalContent:\s*type=application/soap\+xml;charset=UTF-8;Length=(\d+)", re.I
)
_OCTETS: Final = b"\tContent-Type: application/octet-stream\r\n"


class SealingError(Exception):
    """A body that is not a sealed WinRM message, or does not unseal with this context."""


def is_sealed(content_type: str) -> bool:
    return content_type.lower().startswith("multipart/encrypted")


def protocol_of(content_type: str) -> str | None:
    match = re.search(r'protocol="([^"]+)"', content_type)
    return match.group(1) if match else None


def unseal(context: Any, content_type: str, body: bytes) -> bytes:
    """The plaintext SOAP envelope of a sealed request (SealingError when it is not one)."""
    protocol = protocol_of(content_type)
    if protocol not in PROTOCOLS:
        raise SealingError(f"unsupported encryption protocol {protocol!r}")
    marker = f"--{_BOUNDARY}\r\n".encode()
    parts = [p for p in body.split(marker) if p]
    if len(parts) != 2 or not parts[1].startswith(_OCTETS):
        raise SealingError("not a two-part encrypted body")
    length = _LENGTH.search(parts[0])
    if length is None:
        raise SealingError("the header part has no OriginalContent length")
    payload = parts[1][len(_OCTETS) :]
    end = f"--{_BOUNDARY}--\r\n".encode()
    if not payload.endswith(end):
        raise SealingError("the body has no closing boundary")
    payload = payload[: -len(end)]
    if len(payload) < 4:
        raise SealingError("the sealed part is too short")
    (header_length,) = struct.unpack("<i", payload[:4])
    if not 0 < header_length <= len(payload) - 4:
        raise SealingError("the signature length is out of range")
    header = payload[4 : 4 + header_length]
    try:
        plain: bytes = context.unwrap_winrm(header, payload[4 + header_length :])
    except Exception as exc:  # pyspnego raises its own errors, and ValueError on garbage
        raise SealingError(
            f"the body does not unseal with this connection's context ({type(exc).__name__})"
        ) from None
    declared = int(length.group(1))
    # the client declares the plaintext length plus its cipher padding (none for NTLM/RC4)
    if not len(plain) <= declared <= len(plain) + 16:
        raise SealingError("the declared length does not match the plaintext")
    return plain


def seal(context: Any, protocol: str, plain: bytes) -> tuple[str, bytes]:
    """The HTTP Content-Type and body of a sealed reply."""
    header, data, _padding = context.wrap_winrm(plain)
    head = "\r\n".join(
        [
            f"--{_BOUNDARY}",
            f"\tContent-Type: {protocol}",
            # the length the client checks its unsealed bytes against
            f"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length={len(plain)}",
            f"--{_BOUNDARY}",
            "\tContent-Type: application/octet-stream",
            "",
        ]
    ).encode()
    body = head + struct.pack("<i", len(header)) + header + data + f"--{_BOUNDARY}--\r\n".encode()
    content_type = f'multipart/encrypted;protocol="{protocol}";boundary="{_BOUNDARY}"'
    return content_type, body
