"""Run a SimServer on its own event loop in a background thread, for sync tests and scripts.

    with SimServerThread(executor) as sim:
        ep = sim.add_host("win01", host, username="u", password="p")
        wsman = client_for(ep, "u", "p", ca_bundle=sim.ca_bundle)

Everything started here is stopped on exit: the hosts, the loop and the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pypsrp.wsman import WSMan

from harness.process import Lifecycle
from winsim.api import Executor
from winsim.server import HostEndpoint, SimServer
from winsim.tls import CertificateAuthority

T = TypeVar("T")


class SimServerThread(Lifecycle):
    """A SimServer with a synchronous face; its methods may be called from any other thread."""

    def __init__(
        self,
        executor: Executor,
        *,
        ca: CertificateAuthority | None = None,
        ca_bundle: str | Path | None = None,
        call_timeout: float = 30.0,
        **options: Any,
    ) -> None:
        """``options`` go to ``SimServer`` (``idle_close_s``)."""
        self.server = SimServer(executor, ca=ca, ca_bundle=ca_bundle, **options)
        self.call_timeout = call_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("SimServerThread is not started")
        return self._loop

    def start(self) -> SimServerThread:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="winsim-server", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self.call(self.server.start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if not loop.is_closed():
                asyncio.run_coroutine_threadsafe(self.server.stop(), loop).result(self.call_timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.call_timeout)
            if not thread.is_alive():
                loop.close()
            self._loop = None
            self._thread = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.call_timeout)

    def add_host(self, name: str, host: Any, **options: Any) -> HostEndpoint:
        """``SimServer.add_host`` (``username``, ``password``, ``https``, ...) from this thread."""
        return self.call(self.server.add_host(name, host, **options))

    def remove_host(self, name: str) -> None:
        self.call(self.server.remove_host(name))

    def endpoint(self, name: str) -> HostEndpoint:
        return self.server.endpoint(name)

    @property
    def ca_bundle(self) -> Path:
        return self.server.ca_bundle


def client_for(
    endpoint: HostEndpoint,
    username: str,
    password: str,
    *,
    ca_bundle: str | Path | None = None,
    **kwargs: Any,
) -> WSMan:
    """A pypsrp WSMan for this endpoint with Basic auth (HTTP: encryption never; HTTPS:
    validation against ``ca_bundle``, which is required). Extra kwargs go to WSMan."""
    options: dict[str, Any] = {
        "port": endpoint.port,
        "username": username,
        "password": password,
        "auth": "basic",
        "ssl": endpoint.https,
        "no_proxy": True,
    }
    if endpoint.https:
        if ca_bundle is None:
            raise ValueError("an HTTPS endpoint needs the CA bundle to validate against")
        options["cert_validation"] = str(ca_bundle)
    else:
        options["encryption"] = "never"
        options["cert_validation"] = False
    options.update(kwargs)
    return WSMan(endpoint.address, **options)
