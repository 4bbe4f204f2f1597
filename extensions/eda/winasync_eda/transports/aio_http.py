"""HTTP for the asyncio PSRP client: one aiohttp session for every host, auth and TLS per host.

A waiting Receive is a POST that the host answers up to a minute later: on aiohttp it is a
parked coroutine and a socket, not a thread. Auth here: Basic (over HTTPS, or over HTTP when
the host's settings allow it: encryption ``never``) and client certificates (``certificate``,
WinRM's HTTPS mutual profile); negotiate, ntlm and kerberos go over ``aio_negotiate``'s channels
(a logon per connection), not this session. CredSSP, and a proxy with Negotiate, stay on pypsrp
(``supports``). TLS validation follows ``cert_validation``: on with the system's
CA bundle (certifi's, as requests uses, or ``REQUESTS_CA_BUNDLE``), a CA file or directory, or
off.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from asyncio import sslproto
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import requests.utils

from ..settings import HostSettings
from .aio_negotiate import NEGOTIATE_AUTHS

# WinRM's header for certificate auth over HTTPS (the certificate itself goes in TLS)
CERTIFICATE_AUTH: Final = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"
SUPPORTED_AUTHS: Final = frozenset({"basic", "certificate"})
_CONTENT_TYPE: Final = "application/soap+xml;charset=UTF-8"
# asyncio gives each TLS connection a read buffer of SSLProtocol.max_size (256 KiB), zeroed at
# once: with a Receive parked per host that was 256 MB of RSS at 1,000 hosts. A TLS record is
# at most 16 KiB, so 16 KiB reads cost only more read calls on a large answer (measured with
# 500 parked hosts: 206 KB of RSS per host at 32 KiB, 145 KB at 16 KiB).
TLS_READ_BUFFER: Final = 16 * 1024
# threads of a client given no executor (tests, tools): logons only, each a few milliseconds
# unless Kerberos waits for a KDC
_OWN_LOGON_THREADS: Final = 4


def supports(settings: HostSettings) -> str | None:
    """None when this client can reach the host; else why not (the host stays on pypsrp)."""
    if settings.auth in NEGOTIATE_AUTHS:
        # a channel connects straight to the host
        if _proxy_for(settings, _url(settings)):
            return f"auth {settings.auth!r} through a proxy"
        return None
    if settings.auth not in SUPPORTED_AUTHS:
        return f"auth {settings.auth!r}"
    if settings.encryption == "always":
        return "message encryption"
    return None


def _url(settings: HostSettings) -> str:
    address = settings.address or settings.name
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{settings.protocol}://{address}:{settings.effective_port}/{settings.path}"


class HttpFailure(Exception):
    """A request that got no HTTP reply: ``kind`` is the same wording psrp.py uses."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


@dataclass(frozen=True)
class Endpoint:
    """How to reach one host: URL, headers (they hold the credentials), TLS, proxy, timeouts."""

    url: str
    headers: dict[str, str] = field(repr=False)
    ssl: ssl.SSLContext | bool
    proxy: str | None = field(repr=False)
    connect_timeout: float
    read_timeout: float


class HttpClient:
    """The source's one aiohttp session; TLS contexts shared by the hosts that share settings;
    the thread pool the Negotiate logons build their security contexts in."""

    def __init__(self, cleanups: int = 64, executor: Executor | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        # pyspnego blocks (Kerberos may wait seconds for a KDC): the source's own pool, never the
        # engine loop's default executor; without one, a small pool of this client's own
        self._executor = executor
        self._own_executor: ThreadPoolExecutor | None = None
        self._contexts: dict[tuple[object, ...], ssl.SSLContext] = {}
        # Deletes after a cancel each need a connection of their own (the cancelled Receive's
        # is closed): at shutdown, 2,000 at once were 2,000 TLS handshakes at once, the peak of
        # the run's RSS (450 MB; 393 MB while watching)
        self.cleanup_slots = asyncio.Semaphore(cleanups)
        _small_tls_read_buffers()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # no pool limit: each host has at most a parked Receive and a Delete aside
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=90)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False
            )
        return self._session

    @property
    def executor(self) -> Executor:
        """Where the logons' blocking work runs."""
        if self._executor is None:
            self._own_executor = ThreadPoolExecutor(
                _OWN_LOGON_THREADS, thread_name_prefix="winasync-logon"
            )
            self._executor = self._own_executor
        return self._executor

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        own, self._own_executor = self._own_executor, None
        if own is not None:
            self._executor = None
            own.shutdown(wait=False, cancel_futures=True)

    def endpoint(self, settings: HostSettings) -> Endpoint:
        url = _url(settings)
        headers = {"Content-Type": _CONTENT_TYPE}
        if settings.auth == "basic":
            user = settings.username or ""
            password = settings.password.reveal() if settings.password is not None else ""
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        elif settings.auth == "certificate":
            headers["Authorization"] = CERTIFICATE_AUTH
        return Endpoint(
            url=url,
            headers=headers,
            ssl=self._ssl(settings) if settings.ssl else False,
            proxy=_proxy_for(settings, url),
            connect_timeout=settings.connection_timeout,
            read_timeout=settings.read_timeout,
        )

    def _ssl(self, settings: HostSettings) -> ssl.SSLContext:
        validation = settings.cert_validation
        key = (validation, settings.certificate_pem, settings.certificate_key_pem)
        context = self._contexts.get(key)
        if context is None:
            context = _ssl_context(settings)
            self._contexts[key] = context
        return context

    async def post(
        self, endpoint: Endpoint, body: bytes, read_timeout: float, *, last: bool = False
    ) -> Reply:
        """POST one envelope; the reply whatever its status, or HttpFailure. ``last``: the
        connection is closed after it (a Delete: no request of that shell follows)."""
        headers = {**endpoint.headers, "Connection": "close"} if last else endpoint.headers
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=endpoint.connect_timeout, sock_read=read_timeout
        )
        try:
            async with self._open().post(
                endpoint.url,
                data=body,
                headers=headers,
                ssl=endpoint.ssl,
                proxy=endpoint.proxy,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                return Reply(response.status, await response.read())
        except aiohttp.ClientSSLError as exc:
            raise HttpFailure("TLS error", _text(exc)) from None
        except aiohttp.ClientProxyConnectionError as exc:
            raise HttpFailure("proxy error", _text(exc)) from None
        except aiohttp.ConnectionTimeoutError:
            raise HttpFailure("connect timeout", "no connection within the timeout") from None
        except (aiohttp.SocketTimeoutError, TimeoutError):
            raise HttpFailure("read timeout", "no reply within the read timeout") from None
        except aiohttp.ClientPayloadError as exc:
            # the reply was cut mid-body: requests (so pypsrp) calls that an HTTP error
            raise HttpFailure("HTTP error", _text(exc)) from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise HttpFailure("connection error", _text(exc)) from None
        except aiohttp.ClientError as exc:
            raise HttpFailure("HTTP error", _text(exc)) from None


def _small_tls_read_buffers() -> None:
    """Lower asyncio's per-connection TLS read buffer (process-wide: a class attribute; only
    ever lowered, and only the size of each read changes)."""
    current = getattr(sslproto.SSLProtocol, "max_size", None)
    if isinstance(current, int) and current > TLS_READ_BUFFER:
        sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def _text(exc: BaseException) -> str:
    # aiohttp's texts name the host and port, never the headers
    return f"{type(exc).__name__}: {exc}"


def _ssl_context(settings: HostSettings) -> ssl.SSLContext:
    validation = settings.cert_validation
    if validation is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif isinstance(validation, str):
        path = Path(validation)
        if path.is_dir():
            context = ssl.create_default_context(capath=str(path))
        else:
            context = ssl.create_default_context(cafile=str(path))
    else:
        context = ssl.create_default_context(cafile=_default_ca_bundle())
    if settings.auth == "certificate" and settings.certificate_pem:
        context.load_cert_chain(settings.certificate_pem, settings.certificate_key_pem)
    return context


def _default_ca_bundle() -> str | None:
    """The bundle requests (and so pypsrp) validates against, so both backends agree."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        value = os.environ.get(name)
        if value:
            return value
    try:
        import certifi
    except ImportError:  # pragma: no cover - requests depends on certifi
        return None
    return str(certifi.where())


def _proxy_for(settings: HostSettings, url: str) -> str | None:
    """The host's proxy, else the environment's as requests (so pypsrp) finds it, unless
    ``no_proxy``."""
    if settings.proxy:
        return settings.proxy
    if settings.no_proxy:
        return None
    return requests.utils.get_environ_proxies(url).get(settings.protocol)
