"""Many simulated Windows hosts in one process: one aiohttp runner, one listening socket per host.

Each host has its own port (and address), local users, shells, counters and faults. A request is
routed to its host by the local socket address it arrived on, and authenticated by the host's
gate (``winsim.auth``): Basic, Negotiate (NTLM; Kerberos with a keytab) with message encryption
over HTTP or channel binding over HTTPS, or TLS client certificates. As HTTP.sys does, a
keep-alive connection idle for ``idle_close_s`` (120 s by default) is closed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import struct
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from winsim.api import Executor
from winsim.auth.accounts import Accounts
from winsim.auth.bindings import end_point_data
from winsim.auth.certificates import CertificateGate
from winsim.auth.gates import AUTH_KINDS, BasicGate, Connection, Gate, Request
from winsim.auth.negotiate import NegotiateGate
from winsim.counters import Counters
from winsim.faults import LOGON, Fault, FaultKind, FaultPlan
from winsim.tls import DEFAULT_NAMES, CertificateAuthority
from winsim.wsman import (
    ERROR_INVALID_PARAMETER,
    WSManError,
    WSManReply,
    WSManRequest,
    WSManService,
    parse_request,
)

log = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024 * 1024
# how often shells idle past their timeout are closed (WinRM's own sweep is not documented)
REAP_PERIOD_S = 1.0
# HTTP.sys closes a keep-alive connection idle this long (IdleConnectionTimeout, 120 s)
IDLE_CLOSE_S = 120.0


@dataclass(eq=False)
class HostEndpoint:
    """One simulated host as the network sees it."""

    name: str
    host: Any = field(repr=False)
    address: str
    port: int
    https: bool
    username: str
    service: WSManService = field(repr=False)
    auth: str = "basic"
    accounts: Accounts = field(default_factory=Accounts, repr=False)
    counters: Counters = field(default_factory=Counters, repr=False)
    faults: FaultPlan = field(default_factory=FaultPlan, repr=False)
    # the HTTP/<name> principal's host part when Kerberos is accepted
    service_host: str | None = None
    gate: Gate | None = field(default=None, repr=False)
    _socket_key: tuple[str, int] = field(default=("", 0), repr=False)
    _site: web.BaseSite | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.https else "http"

    @property
    def url(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{address}:{self.port}/wsman"

    @property
    def open_shells(self) -> int:
        """Runspace pools the host holds now (a client that closed its pools leaves 0)."""
        return self.service.open_shells

    @property
    def listening(self) -> bool:
        return self._site is not None


class SimServer:
    """The simulated hosts of one process, served from the running event loop.

    Use ``async with SimServer(executor) as server`` (or ``start``/``stop``), then ``add_host``.
    From synchronous code use ``harness.sim_thread.SimServerThread`` (the test plumbing).
    """

    def __init__(
        self,
        executor: Executor,
        *,
        ca: CertificateAuthority | None = None,
        ca_bundle: str | Path | None = None,
        shutdown_timeout: float = 2.0,
        idle_close_s: float = IDLE_CLOSE_S,
    ) -> None:
        self.executor = executor
        self.idle_close_s = idle_close_s
        # the authentication state of each TCP connection, dropped with the connection
        self._connections: weakref.WeakKeyDictionary[Any, Connection] = weakref.WeakKeyDictionary()
        self._ca = ca
        self._ca_bundle = Path(ca_bundle) if ca_bundle is not None else None
        self._tmpdir: str | None = None
        self._shutdown_timeout = shutdown_timeout
        self._endpoints: dict[str, HostEndpoint] = {}
        self._by_socket: dict[tuple[str, int], HostEndpoint] = {}
        self._ssl_contexts: dict[tuple[str, bool], tuple[ssl.SSLContext, bytes]] = {}
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("POST", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
            keepalive_timeout=self.idle_close_s,
        )
        await self._runner.setup()
        self._reaper = asyncio.create_task(self._reap_idle_shells(), name="winsim-reaper")

    async def _reap_idle_shells(self) -> None:
        while True:
            await asyncio.sleep(REAP_PERIOD_S)
            for endpoint in list(self._endpoints.values()):
                endpoint.service.reap_idle()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)
        tasks: list[asyncio.Task[None]] = []
        for endpoint in self._endpoints.values():
            endpoint.faults.on_listen_change = None
            endpoint._site = None
            tasks.extend(endpoint.service.close_all())
        if runner is not None:
            await runner.cleanup()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._endpoints.clear()
        self._by_socket.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- hosts ---------------------------------------------------------------------------

    async def add_host(
        self,
        name: str,
        host: Any,
        *,
        username: str,
        password: str,
        address: str = "127.0.0.1",
        port: int = 0,
        https: bool = False,
        auth: str = "basic",
        users: Mapping[str, str] | None = None,
        service_host: str | None = None,
    ) -> HostEndpoint:
        """Start serving one host; ``port=0`` picks a free port (read it from ``.port``).

        ``username``/``password`` is the host's first local user, ``users`` more of them.
        ``auth``: ``basic``, ``negotiate`` (NTLM; also Kerberos when ``service_host`` is set),
        ``kerberos`` (Negotiate with ``service_host`` required) or ``certificate`` (HTTPS; map
        certificates with ``endpoint.accounts.map_certificate``).
        """
        if self._runner is None:
            raise RuntimeError("SimServer is not started")
        if name in self._endpoints:
            raise ValueError(f"host {name!r} already exists")
        if auth not in AUTH_KINDS:
            raise ValueError(f"auth must be one of {', '.join(AUTH_KINDS)}, not {auth!r}")
        if auth == "certificate" and not https:
            raise ValueError("certificate auth needs https")
        if auth == "kerberos" and not service_host:
            raise ValueError("kerberos auth needs service_host (the name in HTTP/<name>)")
        accounts = Accounts()
        accounts.add_user(username, password)
        for user, secret in (users or {}).items():
            accounts.add_user(user, secret)
        endpoint = HostEndpoint(
            name=name,
            host=host,
            address=address,
            port=port,
            https=https,
            username=username,
            service=WSManService(host, self.executor, machine=name, owner=username),
            auth=auth,
            accounts=accounts,
            service_host=service_host,
        )
        await self._listen(endpoint)
        endpoint.gate = self._gate(endpoint)
        self._endpoints[name] = endpoint
        endpoint.faults.on_listen_change = lambda: self._listen_changed(endpoint)
        # the host's scripted jobs run on this loop; a reboot ends every PSRP session, as on
        # a real host (clients then see an unknown shell and open a new pool)
        if hasattr(host, "attach_loop"):
            host.attach_loop(asyncio.get_running_loop())
        if hasattr(host, "reboot_listeners"):
            host.reboot_listeners.append(endpoint.service.close_all)
        return endpoint

    async def remove_host(self, name: str) -> None:
        endpoint = self._endpoints.pop(name)
        endpoint.faults.on_listen_change = None
        self._by_socket.pop(endpoint._socket_key, None)
        if endpoint._site is not None:
            await endpoint._site.stop()
            endpoint._site = None
        tasks = endpoint.service.close_all()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def endpoint(self, name: str) -> HostEndpoint:
        return self._endpoints[name]

    @property
    def endpoints(self) -> list[HostEndpoint]:
        return list(self._endpoints.values())

    def open_connections(self, name: str) -> int:
        """TCP connections one host holds open now."""
        endpoint = self._endpoints[name]
        server = self._runner.server if self._runner is not None else None
        if server is None:
            return 0
        count = 0
        for handler in server.connections:
            transport = handler.transport
            sockname = transport.get_extra_info("sockname") if transport is not None else None
            if sockname is not None and tuple(sockname[:2]) == endpoint._socket_key:
                count += 1
        return count

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            self._ca = CertificateAuthority()
        return self._ca

    @property
    def ca_bundle(self) -> Path:
        """The CA certificate file clients validate the hosts' certificates against."""
        if self._ca_bundle is None:
            self._tmpdir = tempfile.mkdtemp(prefix="winsim-ca-")
            self._ca_bundle = Path(self._tmpdir, "ca.pem")
        if not self._ca_bundle.exists():
            self.ca.write_bundle(self._ca_bundle)
        return self._ca_bundle

    # --- listening (and not, for the REFUSE fault) ---------------------------------------

    async def _listen(self, endpoint: HostEndpoint) -> None:
        assert self._runner is not None
        family = socket.AF_INET6 if ":" in endpoint.address else socket.AF_INET
        sock = socket.create_server((endpoint.address, endpoint.port), family=family, backlog=512)
        sock.setblocking(False)
        bound = sock.getsockname()
        endpoint.port = bound[1]
        endpoint._socket_key = (bound[0], bound[1])
        self._by_socket[endpoint._socket_key] = endpoint
        ssl_context = None
        if endpoint.https:
            ssl_context, _ = self._ssl_identity(endpoint.address, endpoint.auth == "certificate")
        site = web.SockSite(self._runner, sock, ssl_context=ssl_context)
        await site.start()
        endpoint._site = site

    def _ssl_identity(
        self, address: str, client_certificates: bool
    ) -> tuple[ssl.SSLContext, bytes]:
        """The TLS context of an address and the DER of its certificate (shared by its hosts)."""
        key = (address, client_certificates)
        identity = self._ssl_contexts.get(key)
        if identity is None:
            self.ca_bundle  # noqa: B018 - write the bundle before any client needs it
            identity = self.ca.server_identity(
                (*DEFAULT_NAMES, address), client_certificates=client_certificates
            )
            self._ssl_contexts[key] = identity
        return identity

    def _gate(self, endpoint: HostEndpoint) -> Gate:
        if endpoint.auth == "basic":
            return BasicGate(endpoint.accounts, endpoint.https)
        if endpoint.auth == "certificate":
            return CertificateGate(endpoint.accounts)
        bindings = None
        if endpoint.https:
            bindings = end_point_data(self._ssl_identity(endpoint.address, False)[1])
        return NegotiateGate(
            endpoint.accounts,
            machine=endpoint.name,
            https=endpoint.https,
            bindings=bindings,
            service_host=endpoint.service_host,
        )

    def _listen_changed(self, endpoint: HostEndpoint) -> None:
        """Called from any thread when a REFUSE fault comes or goes; waits when it can."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._runner is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            task = loop.create_task(self._sync_listening(endpoint))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(_log_task_error)
        else:
            asyncio.run_coroutine_threadsafe(self._sync_listening(endpoint), loop).result(10)

    async def _sync_listening(self, endpoint: HostEndpoint) -> None:
        async with endpoint._lock:
            if self._endpoints.get(endpoint.name) is not endpoint or self._runner is None:
                return
            refusing = endpoint.faults.refusing
            if refusing and endpoint._site is not None:
                site, endpoint._site = endpoint._site, None
                await site.stop()
            elif not refusing and endpoint._site is None:
                await self._listen(endpoint)

    # --- requests ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        endpoint = self._by_socket.get((sockname[0], sockname[1])) if sockname else None
        if endpoint is None or endpoint.gate is None or transport is None:
            raise web.HTTPNotFound()
        data = await request.read()
        conn = self._connections.get(transport)
        if conn is None:
            conn = self._connections[transport] = Connection()
        admission = endpoint.gate.admit(_gate_request(request, data), conn)
        if admission.status != 200 or not admission.body:
            # a refusal (counted under the request's action when it is readable), or a
            # handshake leg (counted as Auth; the last one gets a 200 with the final token)
            action = _action_of(admission.body or data) if admission.refused else LOGON
            endpoint.counters.record(action, len(data), 0)
            if admission.bad_credentials:
                endpoint.counters.record_auth_failure()
            headers = CIMultiDict(admission.headers)
            response = web.Response(status=admission.status, headers=headers)
            leg_fault = endpoint.faults.take(LOGON, False) if action == LOGON else None
            if leg_fault is not None and leg_fault.kind == FaultKind.DROP:
                _reset(request)  # the connection goes mid-logon, this leg unanswered
            elif leg_fault is not None and leg_fault.kind == FaultKind.CLOSE:
                response.force_close()  # this leg answered, then the connection closed
            return response
        try:
            req: WSManRequest | None = parse_request(admission.body)
        except WSManError:
            req = None
        action = req.action if req is not None else "unknown"
        fault = endpoint.faults.take(action, req is not None and req.shell_id is not None)
        sent = 0
        try:
            reply = await self._reply(request, endpoint, req, fault)
            if reply is None:
                return web.Response()
            body, content_type = reply.body, reply.content_type
            headers = CIMultiDict(admission.headers)
            if reply.status == 401:
                conn.reset()
                headers = CIMultiDict(endpoint.gate.challenge())
            elif admission.sealed:
                content_type, body = endpoint.gate.seal_reply(conn, body)
            sent = len(body)
            if fault is not None and fault.kind == FaultKind.DROP:
                return await self._drop_mid_reply(request, reply.status, content_type, body)
        finally:
            # counted even when the client gave up (a delayed or long-polled request)
            endpoint.counters.record(action, len(data), sent)
        headers["Content-Type"] = content_type
        response = web.Response(status=reply.status, body=body, headers=headers)
        if fault is not None and fault.kind == FaultKind.CLOSE:
            # as HTTP.sys closing an idle keep-alive connection, right after this reply
            response.force_close()
        return response

    async def _reply(
        self,
        request: web.Request,
        endpoint: HostEndpoint,
        req: WSManRequest | None,
        fault: Fault | None,
    ) -> WSManReply | None:
        """The reply to send, or None when the connection was closed instead."""
        kind = fault.kind if fault is not None else None
        if kind in (FaultKind.REFUSE, FaultKind.FLAP):  # FLAP: take() returns it when down
            _abort(request)
            return None
        if kind == FaultKind.UNAUTHORIZED:
            return WSManReply(401, b"", "text/plain")
        message_id = req.message_id if req is not None else ""
        if fault is not None and kind == FaultKind.WSMAN_FAULT:
            return endpoint.service.fault(
                message_id, WSManError(fault.code, fault.message, "w:InternalError")
            )
        if fault is not None and kind == FaultKind.HTTP_ERROR:
            return WSManReply(fault.status, fault.message.encode(), "text/plain")
        if fault is not None and kind == FaultKind.DELAY:
            # handler_cancellation: a client that gives up cancels this wait, and the request
            # is then never carried out
            await asyncio.sleep(fault.delay)
        if req is None:
            error = WSManError(ERROR_INVALID_PARAMETER, "not a SOAP request")
            return endpoint.service.fault(message_id, error)
        if kind == FaultKind.SHELL_LOST and req.shell_id:
            for task in endpoint.service.forget_shell(req.shell_id):
                await asyncio.gather(task, return_exceptions=True)
        if kind == FaultKind.POOL_BROKEN and req.shell_id:
            endpoint.service.break_shell(req.shell_id)
        peer = request.remote or ""
        return await endpoint.service.handle(req, client_ip=peer)

    async def _drop_mid_reply(
        self, request: web.Request, status: int, content_type: str, body: bytes
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: max(1, len(body) // 2)])
        _abort(request)
        return response


def _action_of(body: bytes) -> str:
    if not body.lstrip().startswith(b"<"):
        return "Auth"
    try:
        return parse_request(body).action
    except WSManError:
        return "unknown"


def _gate_request(request: web.Request, body: bytes) -> Request:
    peer: bytes | None = None
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is not None:
        peer = ssl_object.getpeercert(binary_form=True)
    return Request(
        authorization=request.headers.get("Authorization"),
        content_type=request.headers.get("Content-Type", ""),
        body=body,
        peer_certificate=peer,
    )


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _reset(request: web.Request) -> None:
    """Abort with a TCP reset (SO_LINGER 0), as a host or a firewall dropping the connection."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _abort(request)


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("listening change failed", exc_info=task.exception())
