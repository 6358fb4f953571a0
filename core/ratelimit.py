"""In-process rate limits of the account endpoints: a sliding window of attempts per key.

Each API process keeps its own windows, so N processes admit up to N times a limit; that still caps
password guessing at a rate argon2 and the operator can live with, without a shared store.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from core.errors import RateLimited

Clock = Callable[[], float]


class SlidingWindowLimiter:
    """At most `limit` hits per key within any `window` seconds."""

    def __init__(self, limit: int, window: float = 60.0, *, clock: Clock = time.monotonic, max_keys: int = 50_000):
        if limit < 1 or window <= 0:
            raise ValueError("limit must be at least 1 and window positive")
        self.limit = limit
        self.window = window
        self.clock = clock
        # Keys come from the network (addresses, claimed emails): without a bound, a spray of distinct
        # keys would grow this process's memory without end.
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def hit(self, key: str) -> float:
        """Count one attempt. Returns 0 when it is allowed, else the seconds until one would be (and does
        not count it, so a client that keeps hammering is not locked out for longer)."""
        now = self.clock()
        hits = self._recent(key, now)
        if hits is not None and len(hits) >= self.limit:
            return hits[0] + self.window - now
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._prune(now)
            hits = self._hits.setdefault(key, deque())
        hits.append(now)
        return 0.0

    def refund(self, key: str) -> None:
        """Take back the latest attempt of `key` (one that turned out not to count)."""
        hits = self._hits.get(key)
        if hits:
            hits.pop()
            if not hits:
                del self._hits[key]

    def __len__(self) -> int:
        return len(self._hits)

    def _prune(self, now: float) -> None:
        for key in list(self._hits):
            self._recent(key, now)
        # Still full of live windows: forget the oldest keys (dicts keep insertion order) rather than
        # refuse everyone else.
        excess = len(self._hits) - self.max_keys + 1
        for key in list(self._hits)[: max(excess, 0)]:
            del self._hits[key]


def retry_after_seconds(wait: float) -> int:
    """Whole seconds for a Retry-After header: never 0, which would invite an immediate retry."""
    return max(1, math.ceil(wait))


class LoginThrottle:
    """The limits of login and registration: attempts per client address; failed logins per account from
    each address; and, well above that, failed logins per account from all addresses together.

    Failures are counted per account and address so that someone guessing a password from one address
    cannot lock its owner out of logging in from another: only the ceiling, which takes many addresses
    to reach, shuts an account for everyone (and bounds how fast a password can be guessed at all)."""

    def __init__(
        self,
        per_address: int,
        failures_per_account_address: int,
        failures_per_account: int,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.addresses = SlidingWindowLimiter(per_address, clock=clock)
        self.account_addresses = SlidingWindowLimiter(failures_per_account_address, clock=clock)
        self.accounts = SlidingWindowLimiter(failures_per_account, clock=clock)

    def attempt_from(self, address: str) -> None:
        wait = self.addresses.hit(address)
        if wait > 0:
            raise RateLimited("too many login or registration attempts from this address; try again later", wait)

    @staticmethod
    def _pair(account: str, address: str) -> str:
        # No email or address holds a newline, so two different pairs never make the same key.
        return f"{account.lower()}\n{address}"

    def attempt_on(self, account: str, address: str) -> None:
        """Count a failed login on `account` from `address` before its password is checked; `release` takes
        it back when the login turns out not to have failed. Counting first means concurrent guesses cannot
        all slip in under the limits while their hashes are being checked."""
        pair = self._pair(account, address)
        wait = self.account_addresses.hit(pair)
        if wait > 0:
            raise RateLimited("too many failed logins for this account from this address; try again later", wait)
        wait = self.accounts.hit(account.lower())
        if wait > 0:
            self.account_addresses.refund(pair)
            raise RateLimited("too many failed logins for this account; try again later", wait)

    def release(self, account: str, address: str) -> None:
        self.account_addresses.refund(self._pair(account, address))
        self.accounts.refund(account.lower())
