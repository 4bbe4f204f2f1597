"""The local accounts of one simulated host: who may log on, and as which local user.

Each host has its own: a user of one host is not let into another, even with the same name.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field


@dataclass(eq=False)
class Accounts:
    """Local users (name -> password), Kerberos principals and certificate subjects mapped to them.

    ``repr`` shows the names only.
    """

    _passwords: dict[str, str] = field(default_factory=dict, repr=False)
    # ``user@REALM`` (as the KDC names the client) -> local user
    principals: dict[str, str] = field(default_factory=dict)
    # a client certificate's UPN (``user@localhost``, as ``New-Item WSMan:\...\ClientCertificate
    # -Subject`` maps it) -> local user
    certificates: dict[str, str] = field(default_factory=dict)
    # the principals as the KDC spells them (realms are case-sensitive)
    _principal_names: dict[str, str] = field(default_factory=dict, repr=False)

    def add_user(self, name: str, password: str) -> None:
        if not name or any(c in name for c in ":\\@\n"):
            raise ValueError(f"{name!r} is not a plain local user name")
        # pyspnego's NTLM user file is DOMAIN:USER:PASSWORD lines
        if not password or any(c in password for c in ":\r\n"):
            raise ValueError(f"the password of {name!r} must be non-empty, without ':' or newlines")
        self._passwords[name.lower()] = password

    def map_principal(self, principal: str, user: str) -> None:
        """Let a Kerberos principal (``alice@REALM``) log on as a local user of this host."""
        self.principals[principal.lower()] = user.lower()
        self._principal_names[principal.lower()] = principal

    def principal_of(self, user: str) -> str | None:
        """The Kerberos principal mapped to a local user, if any."""
        found = next((p for p, u in self.principals.items() if u == user.lower()), None)
        return self._principal_names.get(found) if found else None

    def map_certificate(self, upn: str, user: str) -> None:
        """Let a client certificate whose UPN is ``upn`` log on as a local user of this host."""
        self.certificates[upn.lower()] = user.lower()

    @property
    def users(self) -> list[str]:
        return sorted(self._passwords)

    def check_password(self, user: str, password: str) -> bool:
        """Windows compares user names without case, passwords exactly."""
        expected = self._passwords.get(user.lower())
        if expected is None:
            hmac.compare_digest(password.encode(), password.encode())  # same work either way
            return False
        return hmac.compare_digest(password.encode(), expected.encode())

    def ntlm_lines(self, machine: str) -> str:
        """The host's users in pyspnego's ``NTLM_USER_FILE`` format (``DOMAIN:USER:PASSWORD``).

        Each user twice: with an empty domain (the client sent a bare name, which Windows takes
        as this machine) and with the machine's NetBIOS name (``WIN01\\ansible``).
        """
        lines = []
        for user, password in self._passwords.items():
            lines.append(f":{user}:{password}")
            lines.append(f"{machine.upper()}:{user}:{password}")
        return "".join(line + "\n" for line in lines)

    def local_user(self, principal: str, machine: str) -> str | None:
        """The local user an authenticated principal logs on as, or None when it has none here.

        NTLM names a local user (``user``, ``MACHINE\\user``); Kerberos a domain principal.
        """
        if "@" in principal:
            return self.principals.get(principal.lower())
        domain, _sep, user = principal.rpartition("\\")
        if domain and domain.upper() not in (machine.upper(), "."):
            return None
        return user.lower() if user.lower() in self._passwords else None
