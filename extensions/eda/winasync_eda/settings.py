"""How to reach one host: the one settings type, with each default and each rule kept once.

``hosts.py`` builds a :class:`HostSettings` for every host while it checks the arguments, and
the transports take it as it is. A field's default here is the built-in default of the source
argument of the same name (the plugin's DOCUMENTATION says the same, and a test keeps the two
equal). The rules mirror what pypsrp's ``WSMan`` would refuse later (auth names, message
encryption over plain HTTP) and what a host needs to log on, so a bad combination stops the
source at start with a message instead of failing every poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from .secret import Secret

# the auths pypsrp supports (its wsman.py keeps the same single list)
AUTHS: Final = ("basic", "certificate", "credssp", "kerberos", "negotiate", "ntlm")
# the auths that log on with a username and a password (kerberos may use a ticket instead)
NEEDS_PASSWORD: Final = frozenset({"basic", "credssp", "negotiate", "ntlm"})
# the auths that can wrap messages themselves (pypsrp's rule for message encryption)
WRAPPING_AUTHS: Final = frozenset({"negotiate", "credssp", "kerberos", "ntlm"})
PROTOCOLS: Final = ("https", "http")
ENCRYPTIONS: Final = ("auto", "always", "never")
CONNECTIONS: Final = ("psrp", "local")
PSRP_ASYNC_DIR: Final = "%USERPROFILE%\\.ansible_async"
LOCAL_ASYNC_DIR: Final = "~/.ansible_async"


class SettingsError(ValueError):
    """A host's settings break a rule; ``key`` is the setting at fault (for the message)."""

    def __init__(self, host: str, problem: str, key: str) -> None:
        super().__init__(f"host {host!r}: {problem}")
        self.problem = problem
        self.key = key


def protocol_for(port: int | None) -> str:
    """ansible's psrp rule: http when the port alone is 5985, else https."""
    return "http" if port == 5985 else "https"


@dataclass(frozen=True)
class HostSettings:
    """One host to watch, every setting resolved; ``repr`` masks the password, hides the proxy.

    Unset (``None`` or empty) ``address``, ``protocol`` and ``async_dir`` are filled in from the
    others: the name, the port (:func:`protocol_for`) and the connection.
    """

    name: str
    connection: str = "psrp"
    async_dir: str = ""
    address: str | None = None
    port: int | None = None
    protocol: str = ""
    username: str | None = None
    password: Secret | None = None
    auth: str = "negotiate"
    cert_validation: bool | str = True
    encryption: str = "auto"
    path: str = "wsman"
    connection_timeout: float = 30.0
    read_timeout: float = 30.0
    operation_timeout: float = 20.0
    certificate_pem: str | None = None
    certificate_key_pem: str | None = None
    # Kerberos: the host name of the SPN (HTTP/<name>) when the address is not that name
    negotiate_hostname_override: str | None = None
    # an encrypted session (HTTP) idle this long is replaced before the next poll: HTTP.sys
    # closes idle connections after 120 s, and pypsrp cannot carry the session to a new one
    sealed_idle_s: float = 100.0
    # not source arguments: a proxy URL may carry user:password
    proxy: str | None = field(default=None, repr=False)
    no_proxy: bool = False
    reconnection_retries: int = 0
    # pypsrp retries a timed-out Receive 5 times, sleeping backoff * (2**n - 1): 114 s at its
    # default of 2.0, 28.5 s at 0.5. The scheduler has its own backoff; a thread should not hang.
    reconnection_backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.address is None:
            object.__setattr__(self, "address", self.name)
        if not self.protocol:
            object.__setattr__(self, "protocol", protocol_for(self.port))
        if not self.async_dir:
            default = LOCAL_ASYNC_DIR if self.connection == "local" else PSRP_ASYNC_DIR
            object.__setattr__(self, "async_dir", default)
        if self.connection not in CONNECTIONS:
            self._refuse("connection", f"unknown connection {self.connection!r}")
        if self.connection == "psrp":
            self._check_psrp()

    def _refuse(self, key: str, problem: str) -> None:
        raise SettingsError(self.name, problem, key)

    def _check_psrp(self) -> None:
        for key, value, options in (
            ("protocol", self.protocol, PROTOCOLS),
            ("auth", self.auth, AUTHS),
            ("encryption", self.encryption, ENCRYPTIONS),
        ):
            if value not in options:
                self._refuse(
                    key, f"unknown {key} {value!r} (expected one of: {', '.join(options)})"
                )
        if not self.address:
            self._refuse("address", "address is empty")
        if self.port is not None and not 0 < self.port < 65536:
            self._refuse("port", f"port {self.port} is out of range")
        if min(self.connection_timeout, self.read_timeout, self.operation_timeout) <= 0:
            self._refuse("read_timeout", "timeouts must be positive")
        if self.read_timeout <= self.operation_timeout:
            self._refuse(
                "read_timeout",
                f"read_timeout ({self.read_timeout:g}) must be greater than "
                f"operation_timeout ({self.operation_timeout:g})",
            )
        if self.reconnection_retries < 0 or self.reconnection_backoff < 0:
            self._refuse("reconnection_retries", "reconnection settings must not be negative")
        self._check_auth()

    def _check_auth(self) -> None:
        auth = self.auth
        if auth == "certificate":
            if self.protocol != "https":
                self._refuse("protocol", "auth 'certificate' needs protocol https")
            for key in ("certificate_pem", "certificate_key_pem"):
                if not getattr(self, key):
                    self._refuse(key, f"auth 'certificate' needs {key}")
        if auth in NEEDS_PASSWORD:
            if not self.username:
                self._refuse("username", f"auth {auth!r} needs a username")
            if not self.password:
                self._refuse("password", f"auth {auth!r} needs a password")
        wraps = auth in WRAPPING_AUTHS
        if self.encryption == "never" and not (self.protocol == "http" and auth == "basic"):
            self._refuse(
                "encryption", "encryption 'never' is allowed only with protocol http and auth basic"
            )
        if self.protocol == "http" and self.encryption != "never" and not wraps:
            self._refuse("protocol", f"auth {auth!r} over http cannot encrypt messages: use https")
        if self.encryption == "always" and not wraps:
            self._refuse(
                "encryption", f"auth {auth!r} cannot encrypt messages: use encryption 'auto'"
            )

    @property
    def ssl(self) -> bool:
        return self.protocol == "https"

    @property
    def seals_messages(self) -> bool:
        """Whether pypsrp encrypts each message with the auth context (WinRM over HTTP)."""
        if self.encryption == "always":
            return True
        return self.protocol == "http" and self.encryption == "auto"

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 5986 if self.ssl else 5985

    def wsman_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``pypsrp.wsman.WSMan``; they hold the revealed password."""
        kwargs: dict[str, Any] = {
            "server": self.address,
            "port": self.effective_port,
            "username": self.username,
            "password": self.password.reveal() if self.password is not None else None,
            "ssl": self.ssl,
            "path": self.path,
            "auth": self.auth,
            "cert_validation": self.cert_validation,
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
            # WS-Management takes whole seconds
            "operation_timeout": max(1, int(self.operation_timeout)),
            "encryption": self.encryption,
            "proxy": self.proxy,
            "no_proxy": self.no_proxy,
            "reconnection_retries": self.reconnection_retries,
            "reconnection_backoff": self.reconnection_backoff,
        }
        if self.negotiate_hostname_override and self.auth in WRAPPING_AUTHS:
            kwargs["negotiate_hostname_override"] = self.negotiate_hostname_override
        if self.auth == "certificate":
            kwargs["certificate_pem"] = self.certificate_pem
            kwargs["certificate_key_pem"] = self.certificate_key_pem
        return kwargs
