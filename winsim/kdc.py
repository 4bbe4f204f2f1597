"""A throwaway MIT Kerberos realm on loopback, so the sim's hosts accept real Kerberos tickets.

Debian's ``krb5-kdc`` binaries (``kdb5_util``, ``krb5kdc``, ``kadmin.local``; installed by
``make setup``) driven by ``k5test`` (PyPI), with no root and no change to the machine's own
Kerberos setup: everything lives in a temp directory. The KDC issues service tickets for
``HTTP/<host name>``; each service key goes into one keytab (``KRB5_KTNAME``), from which the
hosts' acceptors (pyspnego over gssapi) read the keys. One keytab holds every host's keys, so
a host also checks that a ticket names one of its own SPNs (a Windows host only has its own
key, and cannot read a ticket for another). Reverse DNS is off (``rdns``,
``dns_canonicalize_hostname``), so a client that connects to 127.0.0.1 and names the host with
``negotiate_hostname_override`` asks for exactly that SPN.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final

log = logging.getLogger(__name__)

REALM: Final = "WINSIM.TEST"
# what this process needs to accept tickets (the keytab) and to ask the KDC for them
PROCESS_ENV: Final = ("KRB5_CONFIG", "KRB5_KTNAME", "KRB5RCACHEDIR")
DOMAIN: Final = "winsim.test"
# where the KDC binaries are on Debian (k5test also looks on PATH)
_SBIN: Final = Path("/usr/sbin")


class KdcError(RuntimeError):
    """The KDC tools are missing, or the realm did not start."""


def available() -> str | None:
    """None when a realm can start here; else what is missing."""
    missing = [n for n in ("krb5kdc", "kdb5_util", "kadmin.local") if not _tool(n)]
    if missing:
        return f"{', '.join(missing)} not found (Debian: krb5-kdc, krb5-admin-server; make setup)"
    try:
        import gssapi  # noqa: F401
        import k5test  # noqa: F401
        import krb5  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (the kerberos dependency group; make setup)"
    return None


def _tool(name: str) -> str | None:
    return shutil.which(name) or (str(_SBIN / name) if (_SBIN / name).exists() else None)


def _free_portbase() -> int:
    """A base port whose KDC port (TCP and UDP) is free now."""
    rng = random.SystemRandom()
    for _attempt in range(50):
        base = rng.randrange(20000, 60000, 10)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", base))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", base))
        except OSError:
            continue
        return base
    raise KdcError("no free port for the KDC")


class Kdc:
    """One realm: ``start()``, then ``add_service``/``add_user``; ``stop()`` removes it all."""

    def __init__(self, realm: str = REALM, domain: str = DOMAIN) -> None:
        self.realm = realm
        self.domain = domain
        self._k5: Any = None

    def start(self) -> Kdc:
        problem = available()
        if problem:
            raise KdcError(f"cannot start a Kerberos realm: {problem}")
        from k5test import K5Realm

        paths = {n: p for n in ("krb5kdc", "kdb5_util", "kadmin.local") if (p := _tool(n))}
        base = _free_portbase()
        conf = {
            "libdefaults": {
                "default_realm": self.realm,
                "rdns": "false",
                "dns_canonicalize_hostname": "false",
                "dns_lookup_kdc": "false",
                "dns_lookup_realm": "false",
                "udp_preference_limit": "1",  # TCP: no datagram loss on a busy machine
            },
            "realms": {
                "$realm": {"kdc": f"127.0.0.1:{base}", "admin_server": f"127.0.0.1:{base + 1}"}
            },
            "domain_realm": {f".{self.domain}": self.realm, self.domain: self.realm},
        }
        try:
            self._k5 = K5Realm(
                realm=self.realm,
                portbase=base,
                krb5_conf=conf,
                create_user=False,
                create_host=False,
                get_creds=False,
                start_kdc=True,
                **paths,
            )
        except Exception as exc:
            raise KdcError(f"the KDC did not start: {type(exc).__name__}: {exc}") from None
        os.chmod(self._k5.tmpdir, 0o700)
        log.info("Kerberos realm %s on 127.0.0.1:%d", self.realm, base)
        return self

    def stop(self) -> None:
        k5, self._k5 = self._k5, None
        if k5 is not None:
            k5.stop()

    def __enter__(self) -> Kdc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def _realm(self) -> Any:
        if self._k5 is None:
            raise KdcError("the realm is not started")
        return self._k5

    @property
    def env(self) -> dict[str, str]:
        """``KRB5_CONFIG``, ``KRB5_KTNAME`` (the acceptor keytab), ``KRB5CCNAME``, ..."""
        return dict(self._realm.env)

    @contextlib.contextmanager
    def in_this_process(self) -> Iterator[None]:
        """Point this process's Kerberos library at the realm (``PROCESS_ENV``), then back.

        Like ``NTLM_USER_FILE``, these variables are process-wide: one realm at a time."""
        saved = {key: os.environ.get(key) for key in PROCESS_ENV}
        os.environ.update({key: self.env[key] for key in PROCESS_ENV})
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    @property
    def krb5_conf(self) -> Path:
        return Path(self._realm.env["KRB5_CONFIG"])

    @property
    def keytab(self) -> Path:
        return Path(self._realm.keytab)

    def service_keys(self) -> list[bytes]:
        """The keys in the acceptor keytab (``klist -kK``), for tests that check none leaks."""
        klist = shutil.which("klist") or "/usr/bin/klist"
        out = subprocess.run(
            [klist, "-kK", str(self.keytab)],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [bytes.fromhex(m) for m in re.findall(r"\(0x([0-9a-fA-F]+)\)", out)]

    def host_name(self, host: str) -> str:
        """The DNS name a simulated host has in the realm (its SPN is ``HTTP/<this>``)."""
        return f"{host.lower()}.{self.domain}"

    def add_service(self, host: str) -> str:
        """Create the host's service principals with random keys, put the keys in the keytab;
        returns the host's name. As a computer account in AD has them: ``HTTP/<name>`` (what
        WinRM clients such as pywinrm ask for) and ``host/<name>`` (pypsrp's default)."""
        name = self.host_name(host)
        for service in ("HTTP", "host"):
            principal = f"{service}/{name}@{self.realm}"
            self._realm.addprinc(principal)
            self._realm.extract_keytab(principal, self._realm.keytab)
        return name

    def add_user(self, user: str, password: str) -> str:
        """Create ``user@REALM`` with this password; the principal."""
        principal = f"{user}@{self.realm}"
        self._realm.addprinc(principal, password)
        return principal
