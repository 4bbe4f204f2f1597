"""Channel binding over HTTPS (RFC 5929 ``tls-server-end-point``, MS-NLMP MsvAvChannelBindings).

The acceptor gets the binding of the host's own certificate: pyspnego then refuses a token bound
to another channel. It accepts a token with no binding (all zeros), which Windows accepts too at
its default hardening (``CbtHardeningLevel`` Relaxed) but refuses at Strict; so the NTLM message
is also read here to tell a missing binding apart.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes

_NTLM_AUTHENTICATE: Final = b"NTLMSSP\x00\x03\x00\x00\x00"
_AV_EOL: Final = 0
_AV_CHANNEL_BINDINGS: Final = 0x000A
# NTProofStr (16) + the fixed part of NTLMv2_CLIENT_CHALLENGE (28) before its AV pairs
_AV_PAIRS_AT: Final = 44


def end_point_data(certificate_der: bytes) -> bytes:
    """The application data of the ``tls-server-end-point`` binding of a server certificate."""
    certificate = x509.load_der_x509_certificate(certificate_der)
    algorithm = certificate.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return b"tls-server-end-point:" + digest.finalize()


def ntlm_binding_present(token: bytes) -> bool | None:
    """Whether the NTLM AUTHENTICATE message in ``token`` (raw or inside SPNEGO) carries a
    non-zero channel binding; None when the token holds no NTLM AUTHENTICATE (e.g. Kerberos)."""
    start = token.find(_NTLM_AUTHENTICATE)
    if start < 0:
        return None
    message = token[start:]
    if len(message) < 28:
        return False
    nt_length, _max, nt_offset = struct.unpack_from("<HHI", message, 20)
    response = message[nt_offset : nt_offset + nt_length]
    if len(response) <= 24:  # NTLMv1: no AV pairs, so no binding
        return False
    at = _AV_PAIRS_AT
    while at + 4 <= len(response):
        av_id, av_length = struct.unpack_from("<HH", response, at)
        if av_id == _AV_EOL:
            break
        if av_id == _AV_CHANNEL_BINDINGS:
            value = response[at + 4 : at + 4 + av_length]
            return any(value)
        at += 4 + av_length
    return False
