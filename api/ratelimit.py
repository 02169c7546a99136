"""Per-key rate limits: a token bucket for each caller, pure (no I/O) and thread-safe.

Each key's bucket holds up to `burst` tokens and refills at `rate` tokens a second; a request
takes one. A key seen for the first time starts full. When no token is left, `acquire` says how
long until one is, and the caller answers 429 with `Retry-After` (rounded up: `retry_after`).

The table of buckets is bounded: beyond `max_keys` keys, the least recently seen one is dropped
(a bucket unseen for `burst / rate` seconds is full again, the same as a new one; with fewer
keys than `max_keys`, as with a service's configured API keys, nothing is ever dropped early).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

# a token, less a rounding error: a client exactly at the rate (a request every 1/rate s on the
# clock) is never refused for the last bits of a float
_ONE = 1.0 - 1e-9


class RateLimiter:
    """`acquire(key)`: None if the request may go on, else the seconds until it may."""

    __slots__ = ("_buckets", "_burst", "_clock", "_lock", "_max_keys", "_rate")

    def __init__(
        self,
        rate: float,
        burst: int,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate >= 0 or math.isinf(rate):
            raise ValueError(f"rate must be a finite number >= 0, not {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, not {burst}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys}")
        self._rate = float(rate)
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        # key -> [tokens, time of the last update]: updated in place, least recently seen first
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return int(self._burst)

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float | None:
        """Take a token of `key`'s bucket: None if there was one, else the seconds until there
        is (the request is refused and takes nothing)."""
        rate = self._rate
        if rate == 0.0:
            return None
        now = self._clock()
        with self._lock:
            buckets = self._buckets
            bucket = buckets.get(key)
            if bucket is None:
                if len(buckets) >= self._max_keys:
                    buckets.popitem(last=False)  # the least recently seen
                buckets[key] = [self._burst - 1.0, now]
                return None
            buckets.move_to_end(key)
            elapsed = now - bucket[1]
            tokens = bucket[0]
            if elapsed > 0.0:
                tokens = min(self._burst, tokens + elapsed * rate)
                bucket[1] = now
            if tokens >= _ONE:
                bucket[0] = tokens - 1.0
                return None
            bucket[0] = tokens
            return (1.0 - tokens) / rate


def retry_after(seconds: float) -> str:
    """The `Retry-After` value for a wait of `seconds`: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
