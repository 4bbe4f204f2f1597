"""Negotiate (NTLM, Kerberos) for the asyncio PSRP client: a logon per TCP connection.

Windows binds a Negotiate logon to the TCP connection it ran on, and over HTTP seals each body
with that logon's keys; a pooled HTTP client cannot tell which connection a request takes. So a
``Channel`` owns one connection, speaks HTTP/1.1 on it directly (POSTs with a Content-Length:
all WinRM needs), and logs on again, with a fresh context, whenever it has to open a new one:
after HTTP.sys closed an idle keep-alive connection, after a ``Connection: close``, or after a
request that was cut off. A body is sealed only once the connection it goes on is logged on, so
it can never carry the keys of a closed connection (pypsrp's failure, winrm-facts.md). A request
on a reused connection that the host closed before answering is sent once more on a new one; a
logon the host cut off (it closed or reset the connection mid-handshake) is made once more on a
new connection, with a fresh context.

Over HTTP bodies are sealed (MS-WSMV 2.2.9.1, ``multipart/encrypted``; ``seal``/``unseal``).
Over HTTPS the logon carries the channel binding of the host's certificate
(``tls-server-end-point``, RFC 5929), and bodies go as they are, unless ``encryption: always``:
then they are sealed inside TLS too, as pypsrp does, and as Windows accepts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import ssl
import struct
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import spnego
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from spnego.channel_bindings import GssChannelBindings

from ..settings import HostSettings

NEGOTIATE_AUTHS: Final = frozenset({"negotiate", "ntlm", "kerberos"})
SPNEGO: Final = "application/HTTP-SPNEGO-session-encrypted"
KERBEROS: Final = "application/HTTP-Kerberos-session-encrypted"
SOAP: Final = "application/soap+xml;charset=UTF-8"
BOUNDARY: Final = "Encrypted Boundary"
_OCTETS: Final = b"\tContent-Type: application/octet-stream\r\n"
_LENGTH = re.compile(rb"Length=(\d+)")
_TOKEN = re.compile(r"(?:Negotiate|Kerberos|NTLM)\s+([A-Za-z0-9+/=]+)", re.I)
_MAX_HEADERS: Final = 100
_T = TypeVar("_T")


class SealError(Exception):
    """A reply body that is not a sealed WinRM message, or does not unseal."""


class LogonRefused(Exception):
    """The host answered the logon with a 401: wrong credentials or channel binding."""


class LogonError(Exception):
    """The security library could not log on (no Kerberos ticket, unreachable KDC...)."""


class ChannelError(Exception):
    """A request that got no HTTP reply: ``kind`` is psrp.py's word for the failure."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class _Stale(Exception):
    """The connection was closed before any byte of the reply came."""


def seal(context: Any, protocol: str, plain: bytes) -> tuple[str, bytes]:
    """The Content-Type and body of a sealed request (pypsrp's and Windows' layout)."""
    header, data, padding = context.wrap_winrm(plain)
    head = (
        f"--{BOUNDARY}\r\n"
        f"\tContent-Type: {protocol}\r\n"
        f"\tOriginalContent: type={SOAP};Length={len(plain) + padding}\r\n"
        f"--{BOUNDARY}\r\n"
    ).encode() + _OCTETS
    body = head + struct.pack("<i", len(header)) + header + data + f"--{BOUNDARY}--\r\n".encode()
    content_type = f'multipart/encrypted;protocol="{protocol}";boundary="{BOUNDARY}"'
    return content_type, body


def unseal(context: Any, body: bytes) -> bytes:
    """The plaintext of a sealed reply (a single part: no CredSSP chunks here)."""
    marker = f"--{BOUNDARY}\r\n".encode()
    parts = [part for part in body.split(marker) if part]
    if len(parts) != 2 or not parts[1].startswith(_OCTETS):
        raise SealError("not a two-part encrypted body")
    length = _LENGTH.search(parts[0])
    end = f"--{BOUNDARY}--\r\n".encode()
    payload = parts[1][len(_OCTETS) :]
    if length is None or not payload.endswith(end):
        raise SealError("no OriginalContent length or no closing boundary")
    payload = payload[: -len(end)]
    if len(payload) < 4:
        raise SealError("the sealed part is too short")
    (header_length,) = struct.unpack("<i", payload[:4])
    if not 0 < header_length <= len(payload) - 4:
        raise SealError("the signature length is out of range")
    try:
        plain: bytes = context.unwrap_winrm(
            payload[4 : 4 + header_length], payload[4 + header_length :]
        )
    except Exception as exc:  # pyspnego's own errors, ValueError on garbage
        raise SealError(f"the reply does not unseal ({type(exc).__name__})") from None
    if len(plain) != int(length.group(1)):
        raise SealError("the unsealed length does not match the declared one")
    return plain


def end_point_binding(certificate_der: bytes) -> bytes:
    """RFC 5929 tls-server-end-point: the certificate's own signature hash, SHA-256 for MD5
    and SHA-1."""
    certificate = x509.load_der_x509_certificate(certificate_der)
    algorithm = certificate.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return b"tls-server-end-point:" + digest.finalize()


class Channel:
    """One logged-on TCP connection to a host; one request at a time (the caller's lock)."""

    def __init__(
        self,
        settings: HostSettings,
        url: str,
        tls: ssl.SSLContext | bool,
        connect_timeout: float,
        executor: Executor,
    ) -> None:
        parts = urlsplit(url)
        self._settings = settings
        # the source's thread pool: pyspnego blocks, and the engine's default executor is not ours
        self._executor = executor
        self._host = parts.hostname or ""
        self._port = parts.port or settings.effective_port
        self._target = parts.path or "/"
        self._host_header = parts.netloc
        self._tls = tls if isinstance(tls, ssl.SSLContext) else None
        self._connect_timeout = connect_timeout
        self._seals = settings.seals_messages
        self._protocol = KERBEROS if settings.auth == "kerberos" else SPNEGO
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._context: Any = None
        self.logons = 0  # how many times this channel logged on (tests and debugging)

    async def post(self, body: bytes, read_timeout: float) -> tuple[int, bytes]:
        """POST one SOAP envelope on a logged-on connection: (status, plaintext body)."""
        for attempt in range(2):
            done = False
            fresh = True
            try:
                fresh = await self._ready(read_timeout)
                reply = await self._send(body, read_timeout)
                done = True
                return reply
            except _Stale:
                if fresh or attempt:
                    raise ChannelError(
                        "connection error", "the host closed the connection"
                    ) from None
            finally:
                if not done:
                    # cut off, cancelled or failed: what is left on the socket is not ours
                    self.close()
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def connected(self) -> bool:
        """A connection is open and the host has not closed it (as far as the loop knows)."""
        if self._reader is None or self._writer is None:
            return False
        return not (self._reader.at_eof() or self._writer.is_closing())

    def close(self) -> None:
        writer, self._writer, self._reader, self._context = self._writer, None, None, None
        if writer is not None:
            writer.close()

    # ---- connection and logon ----

    async def _ready(self, read_timeout: float) -> bool:
        """True when the connection (and logon) had to be made now."""
        if self.connected:
            return False
        self.close()  # the host closed it while idle, or there was none
        for attempt in range(2):
            # The first token is made in a thread: for negotiate, pyspnego tries Kerberos
            # first, which may ask a KDC, or time out looking for one (5 s here, where no KDC
            # of the default realm answers): never on the event loop. Over HTTP it is made
            # before connecting, as the host may close a connection idle that long.
            first = None if self._tls else await self._in_thread(self._first_token, None)
            await self._connect()
            if first is None:
                first = await self._in_thread(self._first_token, self._binding())
            try:
                await self._logon(*first, read_timeout)
                return True
            except _Stale:
                self.close()
                if attempt:
                    raise ChannelError(
                        "connection error", "the host closed the connection during the logon"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _in_thread(self, work: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                    limit=2**20,
                )
        except TimeoutError:
            raise ChannelError("connect timeout", "no connection within the timeout") from None
        except ssl.SSLError as exc:
            raise ChannelError("TLS error", f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise ChannelError("connection error", f"{type(exc).__name__}: {exc}") from None

    def _binding(self) -> GssChannelBindings | None:
        """The tls-server-end-point binding of the certificate this connection got."""
        ssl_object = self._writer.get_extra_info("ssl_object") if self._writer else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return GssChannelBindings(application_data=end_point_binding(der)) if der else None

    def _first_token(self, bindings: GssChannelBindings | None) -> tuple[Any, bytes | None]:
        """A fresh security context and its first token."""
        settings = self._settings
        password = settings.password.reveal() if settings.password is not None else None
        try:
            context = spnego.client(
                settings.username,
                password,
                hostname=settings.negotiate_hostname_override or self._host,
                service="HTTP",
                channel_bindings=bindings,
                context_req=spnego.ContextReq.default,
                protocol=settings.auth,
                options=(
                    spnego.NegotiateOptions.wrapping_winrm
                    if self._seals
                    else spnego.NegotiateOptions.none
                ),
            )
            return context, context.step()
        except Exception as exc:
            raise LogonError(_library_text(exc)) from None

    async def _logon(self, context: Any, token: bytes | None, read_timeout: float) -> None:
        """The handshake on empty POSTs: 401s carry the host's tokens, a 200 ends it."""
        self.logons += 1
        while True:
            headers = {"Authorization": f"Negotiate {base64.b64encode(token or b'').decode()}"}
            try:
                status, reply_headers, _body = await self._exchange(headers, b"", read_timeout)
            except ChannelError as exc:
                if exc.kind != "connection error":
                    raise
                raise _Stale() from None  # a leg carries no request: safe to log on again
            answer = _host_token(reply_headers)
            if status == 401 and (answer is None or context.complete):
                raise LogonRefused("the host refused the credentials")
            if status not in (200, 401):
                raise ChannelError("HTTP error", f"status {status} during the logon")
            if status == 401 and "close" in reply_headers.get("connection", "").lower():
                raise _Stale()  # the handshake cannot go on: it starts over on a new connection
            if answer is not None and not context.complete:
                try:
                    # Kerberos may ask the KDC here too
                    token = await self._in_thread(context.step, answer)
                except Exception as exc:
                    raise LogonError(_library_text(exc)) from None
            if status == 200:
                if not context.complete:
                    raise LogonRefused("the host ended the logon before it was complete")
                self._context = context
                return

    # ---- HTTP/1.1 ----

    async def _send(self, body: bytes, read_timeout: float) -> tuple[int, bytes]:
        if self._seals:
            content_type, wire = seal(self._context, self._protocol, body)
        else:
            content_type, wire = SOAP, body
        status, headers, reply = await self._exchange(
            {"Content-Type": content_type}, wire, read_timeout
        )
        if headers.get("content-type", "").lower().startswith("multipart/encrypted"):
            reply = unseal(self._context, reply)
        if "close" in headers.get("connection", "").lower() or status == 401:
            self.close()  # a 401 ends the logon of this connection too
        return status, reply

    async def _exchange(
        self, headers: dict[str, str], body: bytes, read_timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        """One request and its reply; _Stale when the host closed the connection first."""
        reader, writer = self._reader, self._writer
        assert reader is not None
        assert writer is not None
        lines = [f"POST {self._target} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
        except OSError:
            raise _Stale() from None
        try:
            async with asyncio.timeout(read_timeout):
                return await _read_reply(reader)
        except TimeoutError:
            raise ChannelError("read timeout", "no reply within the read timeout") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise ChannelError("connection error", f"{type(exc).__name__}") from None


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise _Stale()
    fields = status_line.decode("latin-1").split(None, 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise ChannelError("HTTP error", "not an HTTP reply")
    headers: dict[str, str] = {}
    for _count in range(_MAX_HEADERS):
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _sep, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip()
        # WWW-Authenticate may come more than once: keep the one with a token
        if name not in headers or _TOKEN.search(value):
            headers[name] = value
    else:
        raise ChannelError("HTTP error", "too many headers")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        while (await reader.readline()).strip():
            pass  # trailers
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return int(fields[1]), headers, body


def _host_token(headers: dict[str, str]) -> bytes | None:
    match = _TOKEN.search(headers.get("www-authenticate", ""))
    if match is None:
        return None
    try:
        return base64.b64decode(match.group(1), validate=True)
    except binascii.Error:
        return None


def _library_text(exc: BaseException) -> str:
    """pyspnego's and gssapi's messages name principals and files, never the password."""
    return f"{type(exc).__name__}: {exc}"
