"""``python -m winsim``: serve simulated Windows hosts, and act on a running sim.

    python -m winsim serve --hosts 3 --state /tmp/sim [--https] [--auth negotiate]
    python -m winsim job --state /tmp/sim --host win01 --outcome failed --duration 3 --rc 2
    python -m winsim reboot --state /tmp/sim --host win01
    python -m winsim orphan --state /tmp/sim --host win01 --jid j123.4000
    python -m winsim hosts --state /tmp/sim

``serve`` keeps its bookkeeping in ``<state>/.winsim/``: one credentials file per host (mode
0600, the only place a password is written), ``hosts.json`` (no secrets), ``inventory.yml`` (an
Ansible inventory for the psrp connection, 0600 as it carries the passwords), for
``--auth certificate`` a client certificate and key per host in ``certificates/`` (0600), and
``control.sock``, a Unix socket the other commands talk to.

``--auth`` is how the hosts log clients on: ``negotiate`` (the default, as Windows: NTLM, with
WinRM message encryption over HTTP, or channel binding with ``--https``), ``basic`` (over HTTP
only because the host then allows unencrypted traffic), ``certificate`` (TLS client
certificates; needs ``--https``) or ``kerberos`` (a real MIT KDC on loopback for the run: the
user is the domain account ``<user>@WINSIM.TEST``; ``krb5.conf`` and ``env``, a file of
``export`` lines a shell or a test sources, tell clients where the KDC is).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from winsim.auth.gates import AUTH_KINDS
from winsim.host import DEFAULT_MEMORY_QUOTA_MB, SimHost
from winsim.jobfiles import GENERATIONS
from winsim.jobs import OUTCOMES
from winsim.kdc import PROCESS_ENV, Kdc
from winsim.kdc import available as kdc_available
from winsim.scripts.dispatch import execute
from winsim.server import IDLE_CLOSE_S, HostEndpoint, SimServer

log = logging.getLogger(__name__)

META_DIR = ".winsim"
SOCKET_NAME = "control.sock"


def meta_dir(state: Path) -> Path:
    return state / META_DIR


def credentials_path(state: Path, name: str) -> Path:
    return meta_dir(state) / "credentials" / f"{name}.json"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def inventory_vars(
    ep: HostEndpoint,
    password: str,
    ca_bundle: Path | None,
    certificate: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """The psrp inventory variables of one simulated host, as a Windows admin writes them for
    its auth kind (also the benchmarks' inventory)."""
    hostvars: dict[str, Any] = {
        "ansible_host": ep.address,
        "ansible_port": ep.port,
        "ansible_connection": "psrp",
        "ansible_user": ep.username,
        "ansible_password": password,
        "ansible_psrp_protocol": ep.scheme,
        "ansible_psrp_auth": ep.auth,
    }
    if ep.https:
        hostvars["ansible_psrp_cert_validation"] = "validate"
        hostvars["ansible_psrp_ca_cert"] = str(ca_bundle)
    elif ep.auth == "basic":
        # Basic over HTTP sends the password in the clear: only ever asked for explicitly
        hostvars["ansible_psrp_message_encryption"] = "never"
    if ep.auth == "kerberos":
        # a domain account; the SPN names the host (HTTP/<name>), the address is 127.0.0.1
        hostvars["ansible_user"] = ep.accounts.principal_of(ep.username)
        hostvars["ansible_psrp_negotiate_hostname_override"] = ep.service_host
    if certificate is not None:
        del hostvars["ansible_user"], hostvars["ansible_password"]
        hostvars["ansible_psrp_certificate_pem"] = str(certificate[0])
        hostvars["ansible_psrp_certificate_key_pem"] = str(certificate[1])
    return hostvars


def _client_certificate(server: SimServer, ep: HostEndpoint, state: Path) -> tuple[Path, Path]:
    """Issue a client certificate for the host's user, map it on the host, write it (0600)."""
    upn = f"{ep.username}@localhost"
    ep.accounts.map_certificate(upn, ep.username)
    cert_pem, key_pem = server.ca.issue_client(upn)
    directory = meta_dir(state) / "certificates"
    cert_file, key_file = directory / f"{ep.name}.pem", directory / f"{ep.name}.key"
    _write_private(cert_file, cert_pem.decode("ascii"))
    _write_private(key_file, key_pem.decode("ascii"))
    return cert_file, key_file


# -- serve ------------------------------------------------------------------------------------


class Control:
    """The control channel of a running sim: JSON over HTTP on a Unix socket."""

    def __init__(self, hosts: dict[str, SimHost], listing: list[dict[str, Any]]) -> None:
        self.hosts = hosts
        self.listing = listing

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/hosts", self.get_hosts)
        app.router.add_post("/job", self.post_job)
        app.router.add_post("/reboot", self.post_reboot)
        app.router.add_post("/orphan", self.post_orphan)
        return app

    def _host(self, body: dict[str, Any]) -> SimHost:
        name = body.get("host")
        if name not in self.hosts:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no host {name!r}"}))
        return self.hosts[name]

    async def get_hosts(self, request: web.Request) -> web.Response:
        return web.json_response(self.listing)

    async def post_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        host = self._host(body)
        options = {k: v for k, v in body.items() if k != "host" and v is not None}
        try:
            jid = host.start_job(**options)
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"host": host.name, "jid": jid})

    async def post_reboot(self, request: web.Request) -> web.Response:
        host = self._host(await request.json())
        host.reboot()
        return web.json_response({"host": host.name, "boot_ms": host.boot_ms})

    async def post_orphan(self, request: web.Request) -> web.Response:
        body = await request.json()
        host = self._host(body)
        if body.get("jid") not in host.jobs:
            return web.json_response({"error": f"no job {body.get('jid')!r}"}, status=404)
        host.orphan_job(body["jid"])
        return web.json_response({"host": host.name, "jid": body["jid"]})


async def serve(args: argparse.Namespace) -> int:
    state = Path(args.state)  # resolved by main
    meta = meta_dir(state)
    meta.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock_path = meta / SOCKET_NAME
    if sock_path.exists():
        if await _control_alive(sock_path):
            print(f"a sim already serves {state}", file=sys.stderr)
            return 1
        sock_path.unlink()
    (meta / "ca.pem").unlink(missing_ok=True)  # a new CA every run: never an old bundle
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    realm = start_realm(meta) if args.auth == "kerberos" else None
    try:
        return await _serve(args, state, stop, realm)
    finally:
        if realm is not None:
            realm.stop()


def start_realm(meta: Path) -> Kdc:
    """A Kerberos realm for the hosts, its ``krb5.conf`` and an ``env`` file for clients."""
    realm = Kdc().start()
    # this process's acceptors read the keytab; nothing else of the realm leaves it
    os.environ.update({key: realm.env[key] for key in PROCESS_ENV})
    conf = meta / "krb5.conf"
    conf.write_text(realm.krb5_conf.read_text(encoding="utf-8"), encoding="utf-8")
    env = {"KRB5_CONFIG": str(conf), "KRB5CCNAME": f"FILE:{meta / 'krb5cc'}"}
    lines = [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    (meta / "env").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return realm


async def _serve(
    args: argparse.Namespace, state: Path, stop: asyncio.Event, realm: Kdc | None
) -> int:
    meta = meta_dir(state)
    sock_path = meta / SOCKET_NAME
    ca_bundle = meta / "ca.pem"
    hosts: dict[str, SimHost] = {}
    listing: list[dict[str, Any]] = []
    inventory: dict[str, Any] = {}
    # with Kerberos the user is a domain account: one password for every host
    domain_password = secrets.token_urlsafe(18)
    principal = realm.add_user(args.user, domain_password) if realm is not None else None
    loop = asyncio.get_running_loop()
    async with SimServer(
        execute, ca_bundle=ca_bundle if args.https else None, idle_close_s=args.idle_close
    ) as server:
        for index in range(1, args.hosts + 1):
            name = f"{args.prefix}{index:02d}"
            host = SimHost(
                name,
                state,
                user=args.user,
                generation=args.generation,
                memory_quota_mb=args.memory_quota_mb,
            )
            host.max_shells_per_user = args.max_shells_per_user
            host.attach_loop(loop)
            password = domain_password if principal else secrets.token_urlsafe(18)
            port = args.base_port + index - 1 if args.base_port else 0
            ep = await server.add_host(
                name,
                host,
                username=args.user,
                password=password,
                address=args.address,
                port=port,
                https=args.https,
                auth=args.auth,
                service_host=realm.add_service(name) if realm is not None else None,
            )
            if principal:
                ep.accounts.map_principal(principal, args.user)
            hosts[name] = host
            bundle = server.ca_bundle if args.https else None
            certificate = (
                _client_certificate(server, ep, state) if args.auth == "certificate" else None
            )
            creds = credentials_path(state, name)
            entry = {
                "name": name,
                "url": ep.url,
                "address": ep.address,
                "port": ep.port,
                "protocol": ep.scheme,
                "auth": ep.auth,
                "username": principal or args.user,
                "service_host": ep.service_host,
                "ca_bundle": str(bundle) if bundle else None,
                "credentials": str(creds),
                "root": str(host.root),
            }
            _write_private(creds, json.dumps(dict(entry, password=password), indent=2))
            listing.append(entry)
            inventory[name] = inventory_vars(ep, password, bundle, certificate)
            print(f"{name} {ep.url} credentials={creds}", flush=True)
        (meta / "hosts.json").write_text(json.dumps(listing, indent=2), encoding="utf-8")
        # JSON is YAML: ansible's yaml inventory plugin reads it
        _write_private(
            meta / "inventory.yml",
            json.dumps({"all": {"children": {"windows": {"hosts": inventory}}}}, indent=2),
        )
        runner = web.AppRunner(Control(hosts, listing).app(), access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(sock_path)).start()
        print(f"control {sock_path}", flush=True)
        try:
            if args.stop_after:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.stop_after)
            else:
                await stop.wait()
        finally:
            await runner.cleanup()
            sock_path.unlink(missing_ok=True)
            for host in hosts.values():
                for job in list(host.jobs.values()):
                    job.kill()
    return 0


# -- the other commands --------------------------------------------------------------------------


async def _control_alive(sock_path: Path) -> bool:
    try:
        await _request(sock_path, "GET", "/hosts", None)
    except (aiohttp.ClientError, OSError):
        return False
    return True


async def _request(sock_path: Path, method: str, path: str, body: dict[str, Any] | None) -> Any:
    connector = aiohttp.UnixConnector(path=str(sock_path))
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.request(method, f"http://winsim{path}", json=body) as response,
    ):
        data = await response.json(content_type=None)
        if response.status >= 400:
            raise CommandError(str(data.get("error", data)))
        return data


class CommandError(Exception):
    """The running sim refused a command."""


def control(state: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    sock_path = meta_dir(Path(state).resolve()) / SOCKET_NAME
    if not sock_path.exists():
        raise CommandError(f"no running sim for {state} (start `python -m winsim serve` first)")
    return asyncio.run(_request(sock_path, method, path, body))


def cmd_job(args: argparse.Namespace) -> int:
    body = {
        "host": args.host,
        "outcome": args.outcome,
        "duration_s": args.duration,
        "rc": args.rc,
        "stdout": args.stdout,
        "stderr": args.stderr,
        "msg": args.msg,
        "generation": args.generation,
        "timeout_s": args.timeout,
        "jid": args.jid,
        "async_dir": args.async_dir,
        "lock_while_writing": args.lock_while_writing or None,
    }
    print(control(args.state, "POST", "/job", body)["jid"])
    return 0


def cmd_reboot(args: argparse.Namespace) -> int:
    answer = control(args.state, "POST", "/reboot", {"host": args.host})
    print(f"{answer['host']} rebooted at {answer['boot_ms']}")
    return 0


def cmd_orphan(args: argparse.Namespace) -> int:
    control(args.state, "POST", "/orphan", {"host": args.host, "jid": args.jid})
    print(f"{args.jid} orphaned")
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    for entry in control(args.state, "GET", "/hosts"):
        print(f"{entry['name']} {entry['url']} credentials={entry['credentials']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m winsim", description=__doc__.split("\n", maxsplit=1)[0]
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the hosts do")
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser("serve", help="serve N simulated hosts until interrupted")
    serve_p.add_argument("--hosts", type=int, default=1)
    serve_p.add_argument("--state", required=True, help="directory holding the hosts' disks")
    serve_p.add_argument("--https", action="store_true", help="HTTPS with a CA of its own")
    serve_p.add_argument(
        "--auth",
        choices=AUTH_KINDS,
        default="negotiate",
        help="how hosts log clients on (default: negotiate; over HTTP with message encryption)",
    )
    serve_p.add_argument(
        "--idle-close",
        type=float,
        default=IDLE_CLOSE_S,
        help="seconds after which an idle keep-alive connection is closed (HTTP.sys: 120)",
    )
    serve_p.add_argument("--address", default="127.0.0.1", help="a loopback address")
    serve_p.add_argument("--base-port", type=int, default=0, help="first port (0: any free)")
    serve_p.add_argument("--prefix", default="win", help="host names: <prefix>01, ...")
    serve_p.add_argument("--user", default="ansible")
    serve_p.add_argument("--generation", choices=GENERATIONS, default="2.19-ps51")
    serve_p.add_argument(
        "--memory-quota-mb",
        type=int,
        default=DEFAULT_MEMORY_QUOTA_MB,
        help="WinRS MaxMemoryPerShellMB of each host (0: no limit)",
    )
    serve_p.add_argument(
        "--max-shells-per-user",
        type=int,
        default=30,
        help="WinRS MaxShellsPerUser of each host (0: no limit)",
    )
    serve_p.add_argument("--stop-after", type=float, default=0.0, help="seconds, 0: never")
    serve_p.set_defaults(func=None)

    job_p = sub.add_parser("job", help="start a scripted async job on a host")
    job_p.add_argument("--state", required=True)
    job_p.add_argument("--host", required=True)
    job_p.add_argument("--outcome", choices=OUTCOMES, default="finished")
    job_p.add_argument("--duration", type=float, default=1.0, help="seconds")
    job_p.add_argument("--rc", type=int)
    job_p.add_argument("--stdout", default="")
    job_p.add_argument("--stderr", default="")
    job_p.add_argument("--msg")
    job_p.add_argument("--generation", choices=GENERATIONS)
    job_p.add_argument("--timeout", type=float, help="the async limit, seconds")
    job_p.add_argument("--jid", help="j<digits> or j<digits>.<pid>")
    job_p.add_argument("--async-dir", default=r"%USERPROFILE%\.ansible_async")
    job_p.add_argument("--lock-while-writing", action="store_true")
    job_p.set_defaults(func=cmd_job)

    reboot_p = sub.add_parser("reboot", help="reboot a host: its running jobs become orphans")
    reboot_p.add_argument("--state", required=True)
    reboot_p.add_argument("--host", required=True)
    reboot_p.set_defaults(func=cmd_reboot)

    orphan_p = sub.add_parser("orphan", help="kill a job's watchdog")
    orphan_p.add_argument("--state", required=True)
    orphan_p.add_argument("--host", required=True)
    orphan_p.add_argument("--jid", required=True)
    orphan_p.set_defaults(func=cmd_orphan)

    hosts_p = sub.add_parser("hosts", help="list the hosts of a running sim")
    hosts_p.add_argument("--state", required=True)
    hosts_p.set_defaults(func=cmd_hosts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.command == "serve":
        if not 1 <= args.hosts <= 1000:
            print("--hosts must be between 1 and 1000", file=sys.stderr)
            return 2
        if args.auth == "kerberos" and (missing := kdc_available()):
            print(f"--auth kerberos needs a KDC: {missing}", file=sys.stderr)
            return 2
        if args.auth == "certificate" and not args.https:
            print("--auth certificate needs --https", file=sys.stderr)
            return 2
        if args.idle_close <= 0:
            print("--idle-close must be positive", file=sys.stderr)
            return 2
        args.state = str(Path(args.state).resolve())
        return asyncio.run(serve(args))
    try:
        return int(args.func(args))
    except CommandError as exc:
        print(f"winsim: {exc}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError) as exc:
        print(f"winsim: cannot reach the sim: {exc}", file=sys.stderr)
        return 1
