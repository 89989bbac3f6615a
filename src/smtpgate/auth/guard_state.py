"""What the guard remembers between attempts, as an interface: ``GuardState``.

Theory of operation
-------------------
The guard (``guard.py``) decides; the state records and counts. A failure is
recorded and answered with its counts in the windows the guard names
(``FailureCounts``); the pure ``guard.blocks_due`` turns counts and thresholds
into blocks, which the guard then asks the state to start. The state never
sees a threshold, so a reload that changes one needs nothing from it, and a
second implementation holds no policy to drift from the first.

The calls are shaped for a key-value store with atomic increments and expiry
(Redis, shared by several nodes) as much as for SQL: each is one round trip,
and the common AUTH decision costs one ``snapshot`` and, on a failure, one
``record_failure`` (a second round trip, ``start_blocks``, only when a
threshold is reached). Every time is Unix seconds from the guard's clock,
passed in; an implementation that expires entries by TTL derives each TTL from
those times (a failure at ``t`` is never counted after ``t + window``).

The calls are synchronous: the guard runs them on threads of its own (reads
and writes apart), each bounded in time; what an unanswered call means is the
guard's decision, not the state's (``guard.py``, "Faults"). The CLI and admin
tools call them directly. ``SqliteGuardStore``
(``guard_store.py``) is the implementation for one node;
``tests/contract/test_guard_state_contract.py`` is the contract every
implementation passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

#: Block kinds. An address or subnet block refuses every AUTH from there; an
#: account block refuses every address; ``account-new`` refuses addresses the
#: account never logged in from; ``throttle`` spaces out new-address attempts.
ADDRESS = "address"
SUBNET = "subnet"
ACCOUNT = "account"
ACCOUNT_NEW = "account-new"
THROTTLE = "throttle"
BLOCK_KINDS = (ADDRESS, SUBNET, ACCOUNT, ACCOUNT_NEW, THROTTLE)
#: The kinds keyed by an account name; the others are keyed by an address or subnet.
ACCOUNT_KINDS = (ACCOUNT, ACCOUNT_NEW, THROTTLE)


class GuardStoreError(Exception):
    """The guard state failed (I/O, corrupt, busy too long, unreachable, closed)."""


@dataclass(frozen=True, slots=True)
class Block:
    kind: str
    key: str
    since: float
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class RecordedFailure:
    """One verified failed login, as recorded."""

    time: float
    address: str
    subnet: str
    #: The account name given (canonical spelling), or "" if none was.
    account: str
    #: The account had logged in from ``address`` before.
    known: bool
    #: Counts toward the account's lockout (a wrong secret, not a policy refusal).
    counts_account: bool


@dataclass(frozen=True, slots=True)
class Windows:
    """How far back ``record_failure`` counts (seconds, from ``[guard]``)."""

    #: The account's failures (``lockout_window``).
    lockout: float
    #: The address's and subnet's failures (``spray_window``).
    spray: float
    #: Consecutive failures from the address, for the penalty (``penalty_window``).
    penalty: float


@dataclass(frozen=True, slots=True)
class FailureCounts:
    """What the state counted once a failure at time ``t`` was recorded (that
    failure included); a failure counts while it is younger than its window:
    ``time > t - window``."""

    #: The account's failures from new (not known) addresses, within ``lockout``;
    #: only those that count toward the account. 0 if the failure named no account
    #: or does not count toward it, as for the next two.
    account_new: int
    #: The account's failures from known addresses, within ``lockout``.
    account_known: int
    #: Distinct addresses among ``account_new``.
    account_new_addresses: int
    #: Every failure from the address, within ``spray``.
    address_failures: int
    #: Distinct account names (non-empty) those failures named.
    address_accounts: int
    #: Distinct account names (non-empty) failures from the subnet named, within ``spray``.
    subnet_accounts: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What ``check`` needs to know about one (address, subnet, account)."""

    blocks: tuple[Block, ...]
    #: Last successful login of the account from the address, or None.
    known_since: float | None
    #: Recent failures from the address (0 once penalty_window has passed).
    penalty_failures: int
    #: Time of the account's last failure from a new address (for throttling);
    #: only looked up when a throttle block is in force, else None.
    last_new_failure: float | None


class GuardState(Protocol):
    """Every method may raise ``GuardStoreError``."""

    def snapshot(
        self, address: str, subnet: str, account: str, now: float, penalty_window: float
    ) -> Snapshot:
        """Blocks in force at ``now`` for the address (kind address), the subnet
        (subnet) and the account (the account kinds), and the rest of ``Snapshot``."""
        ...

    def record_failure(self, failure: RecordedFailure, windows: Windows) -> FailureCounts:
        """Record ``failure`` (and bump the address's penalty count, which restarts
        at 1 after ``windows.penalty`` without a failure); return its counts.
        Concurrent calls from any process or node are each counted exactly once."""
        ...

    def start_blocks(self, blocks: Sequence[Block]) -> list[Block]:
        """Start each block unless one of its (kind, key) is in force at its
        ``since``; return those started, in order. Of concurrent callers starting
        the same block, exactly one gets it back."""
        ...

    def record_success(self, address: str, account: str, now: float, *, reset_penalty: bool) -> None:
        """The account logged in from the address: it is known there from ``now``
        (a later time wins); ``reset_penalty`` forgets the address's penalty."""
        ...

    def active_blocks(self, now: float) -> list[Block]:
        """Every block in force at ``now``, oldest first (for ``guard list``)."""
        ...

    def unlock_account(self, account: str) -> int:
        """Lift the account's blocks (the account kinds) and forget its failures;
        how many blocks went."""
        ...

    def forget_addresses(self, account: str) -> int:
        """Forget the addresses the account logged in from (its known addresses);
        how many went. For an account removed (one added again under its name is
        another person) and a password reset (the old password's holder, perhaps
        an intruder, must not keep the known addresses' higher threshold)."""
        ...

    def unblock(self, key: str) -> int:
        """Lift address/subnet blocks with this key, forget the failures from it (as
        an address or a subnet) and its penalty; how many blocks went."""
        ...

    def plus_fallback(self, address: str, now: float) -> float | None:
        """Until when -PLUS is held back from ``address`` (None: not held back at ``now``)."""
        ...

    def set_plus_fallback(self, address: str, until: float | None) -> None:
        """Hold -PLUS back from ``address`` until ``until``; None lifts it."""
        ...

    def prune(self, now: float, keep_seconds: float, known_seconds: float) -> None:
        """Forget failures, penalties and lapsed blocks older than ``keep_seconds``
        (the longest window or duration), known addresses unused for
        ``known_seconds`` and lapsed -PLUS fallbacks. Nothing a window still needs
        goes. (A store whose entries expire by themselves does nothing here.)"""
        ...

    def close(self) -> None: ...
