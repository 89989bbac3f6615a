"""OpenLDAP ppolicy's lockout and password expiry, read rather than bound against.

Why: with the ``ppolicy`` overlay, the directory refuses the bind of an account
locked after ``pwdMaxFailure`` bad passwords (for ``pwdLockoutDuration``) or of
a password older than ``pwdMaxAge``. A SCRAM login or a credential-cache hit
makes no bind, so such an account went on logging in and sending: its SCRAM keys
outlived the password's expiry for ever. Active Directory's flavour reads the
same state from ``msDS-User-Account-Control-Computed`` (``locked_flags``); this
module does it for OpenLDAP.

What it reads: the entry's operational attributes (``pwdAccountLockedTime``,
``pwdChangedTime``, ``pwdPolicySubentry``; they come only when asked for by
name, ``ENTRY_ATTRIBUTES``) and the policy that applies to it: the entry's
``pwdPolicySubentry``, else ``accounts.ldap.ppolicy_default_dn`` (slapd's
``ppolicy_default``). A policy entry is read with the service account's rights
and kept ``POLICY_TTL`` seconds.

Decisions (``lock_reason``), as ppolicy makes them at a bind:

- ``pwdAccountLockedTime`` of ``000001010000Z``: locked by an administrator,
  until the value is removed.
- Any other ``pwdAccountLockedTime`` T: locked until T + ``pwdLockoutDuration``
  (0: until an administrator unlocks it). The attribute stays after the lockout
  ends, until a bind succeeds, so the time is what counts, not its presence.
- ``pwdChangedTime`` + ``pwdMaxAge`` (when above 0) in the past: the password
  expired. Grace logins (``pwdGraceAuthNLimit``) are not given: they exist to let
  a user reach a password change, which no mail client offers.
- No policy to be found (no subentry, no default configured, or the service
  account may not read it): a lockout's end cannot be told, so a lockout by
  bad passwords is left to the directory's refusal of the bind (SCRAM and cached
  logins go on), and the server log says once which key would fix it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ldap3 import BASE, Connection

#: The entry's operational attributes this reads (asked for by name).
ENTRY_ATTRIBUTES = ("pwdAccountLockedTime", "pwdChangedTime", "pwdPolicySubentry")
#: ppolicy's value for an account locked by an administrator (no end).
ADMIN_LOCK = "000001010000Z"
#: Seconds a policy entry read is used before it is read again.
POLICY_TTL = 60.0


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of a pwdPolicy entry the lock decision needs (seconds)."""

    lockout_duration: int = 0
    max_age: int = 0


def generalized_time(value: str) -> datetime | None:
    """An LDAP GeneralizedTime as ppolicy writes it (``YYYYmmddHHMMSS[.f]Z``), UTC;
    None if it is not one."""
    v = value.strip()
    if not v.endswith("Z"):
        return None
    whole, _, fraction = v[:-1].partition(".")
    try:
        t = datetime.strptime(whole, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    if fraction and fraction.isdigit():
        t += timedelta(microseconds=int(fraction[:6].ljust(6, "0")))
    return t


def lock_reason(entry: Mapping[str, list[str]], policy: Policy | None,
                now: datetime) -> str:
    """Why ppolicy's state locks the entry now, or "" (``entry``: attribute name,
    lower-cased, to its values)."""
    for v in entry.get("pwdaccountlockedtime", []):
        if v.strip() == ADMIN_LOCK:
            return "locked by an administrator in the directory (pwdAccountLockedTime)"
        locked_at = generalized_time(v)
        if policy is None:
            continue  # its end cannot be told: the bind decides (module docstring)
        if locked_at is None:
            return f"pwdAccountLockedTime unreadable ({v[:32]!r})"
        if policy.lockout_duration == 0:
            return ("locked out in the directory after failed passwords, until an "
                    "administrator unlocks it (pwdAccountLockedTime, pwdLockoutDuration 0)")
        if now < locked_at + timedelta(seconds=policy.lockout_duration):
            return ("locked out in the directory after failed passwords "
                    "(pwdAccountLockedTime, pwdLockoutDuration)")
    if policy is not None and policy.max_age > 0:
        for v in entry.get("pwdchangedtime", []):
            changed = generalized_time(v)
            if changed is not None and now >= changed + timedelta(seconds=policy.max_age):
                return "password expired in the directory (pwdChangedTime, pwdMaxAge)"
    return ""


class PolicyReader:
    """The policy that applies to an entry, read with the service account and kept
    ``POLICY_TTL`` seconds per DN. Thread-safe."""

    def __init__(self, default_dn: str, label: str, log: logging.Logger, *, timeout: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._default = default_dn
        self._label = label
        self._log = log
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Policy | None]] = {}
        self._warned: set[str] = set()

    def policy(self, conn: Connection, entry: Mapping[str, list[str]]) -> Policy | None:
        """The entry's policy (None: none configured, or it cannot be read)."""
        dn = next(iter(entry.get("pwdpolicysubentry", [])), "") or self._default
        if not dn:
            if entry.get("pwdaccountlockedtime"):
                self._warn_once("", "an entry locked by ppolicy has no pwdPolicySubentry and "
                                "accounts.ldap.ppolicy_default_dn is not set, so the end of its "
                                "lockout cannot be told: SCRAM and cached logins are not held "
                                "back by it (set ppolicy_default_dn to slapd's ppolicy_default)")
            return None
        now = self._clock()
        with self._lock:
            hit = self._cache.get(dn)
        if hit is not None and now - hit[0] < POLICY_TTL:
            return hit[1]
        policy = self._read(conn, dn)
        with self._lock:
            self._cache[dn] = (now, policy)
        return policy

    def _read(self, conn: Connection, dn: str) -> Policy | None:
        conn.search(dn, "(objectClass=*)", BASE,
                    attributes=["pwdLockoutDuration", "pwdMaxAge"], time_limit=self._timeout)
        found = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
        if (conn.result or {}).get("result") != 0 or not found:
            self._warn_once(dn, f"the password policy {dn} cannot be read by the service "
                            f"account ({(conn.result or {}).get('description')}): lockouts "
                            "and expired passwords do not hold back SCRAM and cached logins "
                            "(give it read access, or fix accounts.ldap.ppolicy_default_dn)")
            return None
        raw: Mapping[str, list[bytes]] = found[0].get("raw_attributes", {})

        def seconds(name: str) -> int:
            for key, values in raw.items():
                if key.lower() == name.lower() and values:
                    try:
                        return max(0, int(values[0]))
                    except ValueError:
                        return 0
            return 0

        return Policy(lockout_duration=seconds("pwdLockoutDuration"),
                      max_age=seconds("pwdMaxAge"))

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        self._log.warning("%s: %s", self._label, message)
