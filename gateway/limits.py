"""The gateway's limits as pure logic: a token bucket per key and counted slots per server and per key.

Both are bounded in the number of keys they remember, since keys come from the network.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

Clock = Callable[[], float]


class TokenBuckets:
    """`rate` tokens a second per key, up to `burst`; a request takes one."""

    def __init__(self, rate: float, burst: float, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def take(self, key: Hashable) -> float:
        """0 when the request may go, else the seconds until a token is there (and nothing is taken)."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                # A forgotten key starts full again: forgetting errs towards letting traffic through.
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = [self.burst, now]
        else:
            self._buckets.move_to_end(key)
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[0], bucket[1] = tokens, now
        if bucket[0] >= 1:
            bucket[0] -= 1
            return 0.0
        return (1 - bucket[0]) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


class Slots:
    """At most `limit` requests at once per key; a key with nothing in flight takes no memory."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._in_use: dict[Hashable, int] = {}

    def acquire(self, key: Hashable, limit: int | None = None) -> bool:
        used = self._in_use.get(key, 0)
        if used >= (limit or self.limit):
            return False
        self._in_use[key] = used + 1
        return True

    def release(self, key: Hashable) -> None:
        used = self._in_use.get(key, 0) - 1
        if used <= 0:
            self._in_use.pop(key, None)
        else:
            self._in_use[key] = used

    def in_use(self, key: Hashable) -> int:
        return self._in_use.get(key, 0)

    def __len__(self) -> int:
        return len(self._in_use)
