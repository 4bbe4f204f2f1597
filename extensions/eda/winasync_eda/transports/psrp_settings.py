"""How to reach one Windows host over PSRP: checked once, at start, so a poll never fails on it.

The checks mirror what pypsrp's ``WSMan`` would refuse later (auth names, message encryption over
plain HTTP), so a bad combination stops the source with a message instead of failing every poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from ..secret import Secret

AUTHS: Final = ("negotiate", "basic", "certificate", "credssp", "kerberos", "ntlm")
PROTOCOLS: Final = ("https", "http")
ENCRYPTIONS: Final = ("auto", "always", "never")
# the auths that can wrap messages themselves (pypsrp's rule for message encryption)
_WRAPPING_AUTHS: Final = ("negotiate", "credssp", "kerberos", "ntlm")


@dataclass(frozen=True)
class PsrpSettings:
    """Connection settings of one host; ``repr`` masks the password and hides the proxy URL."""

    host_name: str
    address: str
    port: int | None = None
    protocol: str = "https"
    username: str | None = None
    password: Secret | None = None
    auth: str = "negotiate"
    cert_validation: bool | str = True
    path: str = "wsman"
    connection_timeout: float = 30.0
    read_timeout: float = 30.0
    operation_timeout: int = 20
    call_deadline_s: float = 60.0
    encryption: str = "auto"
    certificate_pem: str | None = None
    certificate_key_pem: str | None = None
    # Kerberos: the host name of the SPN (HTTP/<name>) when the address is not that name
    negotiate_hostname_override: str | None = None
    # an encrypted session (HTTP) idle this long is replaced before the next poll: HTTP.sys
    # closes idle connections after 120 s, and pypsrp cannot carry the session to a new one
    sealed_idle_s: float = 100.0
    # a proxy URL may carry user:password
    proxy: str | None = field(default=None, repr=False)
    no_proxy: bool = False
    reconnection_retries: int = 0
    # pypsrp retries a timed-out Receive 5 times, sleeping backoff * (2**n - 1): 114 s at its
    # default of 2.0, 28.5 s at 0.5. The scheduler has its own backoff; a thread should not hang.
    reconnection_backoff: float = 0.5

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(f"host {self.host_name!r}: {problem}")

    def _problem(self) -> str | None:
        if not self.address:
            return "address is empty"
        if self.protocol not in PROTOCOLS:
            return f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}"
        if self.auth not in AUTHS:
            return f"auth must be one of {', '.join(AUTHS)}, not {self.auth!r}"
        if self.encryption not in ENCRYPTIONS:
            return f"encryption must be one of {', '.join(ENCRYPTIONS)}, not {self.encryption!r}"
        if self.port is not None and not 0 < self.port < 65536:
            return f"port {self.port} is out of range"
        if min(self.connection_timeout, self.read_timeout, self.call_deadline_s) <= 0:
            return "timeouts and call_deadline_s must be positive"
        if self.operation_timeout < 1:
            return "operation_timeout must be at least 1 second"
        if self.read_timeout <= self.operation_timeout:
            return "read_timeout must be greater than operation_timeout"
        if self.reconnection_retries < 0 or self.reconnection_backoff < 0:
            return "reconnection_retries and reconnection_backoff must not be negative"
        return self._auth_problem()

    def _auth_problem(self) -> str | None:
        if self.encryption == "never" and not (self.protocol == "http" and self.auth == "basic"):
            return "encryption 'never' is allowed only with protocol http and auth basic"
        wraps = self.auth in _WRAPPING_AUTHS
        if self.protocol == "http" and self.encryption != "never" and not wraps:
            return f"auth {self.auth!r} over http cannot encrypt messages: use https"
        if self.encryption == "always" and not wraps:
            return f"auth {self.auth!r} cannot encrypt messages: use encryption 'auto'"
        if self.auth == "certificate" and not (self.certificate_pem and self.certificate_key_pem):
            return "auth certificate needs certificate_pem and certificate_key_pem"
        if self.auth in ("basic", "credssp") and not (self.username and self.password):
            return f"auth {self.auth} needs a username and a password"
        return None

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
            "operation_timeout": self.operation_timeout,
            "encryption": self.encryption,
            "proxy": self.proxy,
            "no_proxy": self.no_proxy,
            "reconnection_retries": self.reconnection_retries,
            "reconnection_backoff": self.reconnection_backoff,
        }
        if self.negotiate_hostname_override and self.auth in _WRAPPING_AUTHS:
            kwargs["negotiate_hostname_override"] = self.negotiate_hostname_override
        if self.auth == "certificate":
            kwargs["certificate_pem"] = self.certificate_pem
            kwargs["certificate_key_pem"] = self.certificate_key_pem
        return kwargs
