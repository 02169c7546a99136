"""The per-key token bucket (api/ratelimit.py), on a fake clock."""

from __future__ import annotations

import threading

import pytest

from api.ratelimit import RateLimiter, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_a_refusal_with_the_time_until_the_next_token() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=5, clock=clock)
    assert [limiter.acquire("a") for _ in range(5)] == [None] * 5
    assert limiter.acquire("a") == pytest.approx(0.1)  # one token every 0.1 s
    clock.now += 0.04
    assert limiter.acquire("a") == pytest.approx(0.06)  # a refusal takes nothing
    clock.now += 0.06
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == pytest.approx(0.1)


def test_a_slow_rate_gives_a_long_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=0.5, burst=1, clock=clock)
    assert limiter.acquire("a") is None
    wait = limiter.acquire("a")
    assert wait is not None and wait == pytest.approx(2.0)
    assert retry_after(wait) == "2"
    assert retry_after(0.01) == "1"  # never 0: the client would retry at once
    assert retry_after(2.2) == "3"


def test_tokens_refill_at_the_rate_up_to_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=100.0, burst=50, clock=clock)
    for _ in range(50):
        assert limiter.acquire("a") is None
    assert limiter.acquire("a") is not None
    clock.now += 0.2  # 20 tokens
    assert [limiter.acquire("a") for _ in range(20)] == [None] * 20
    assert limiter.acquire("a") is not None
    clock.now += 3600  # full again, no more than the burst
    assert [limiter.acquire("a") for _ in range(50)] == [None] * 50
    assert limiter.acquire("a") is not None


def test_a_steady_rate_within_the_limit_is_never_refused() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=50.0, burst=1, clock=clock)
    for _ in range(1000):
        assert limiter.acquire("a") is None
        clock.now += 0.02


def test_keys_are_independent() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert [limiter.acquire("a") for _ in range(2)] == [None, None]
    assert limiter.acquire("a") is not None
    assert [limiter.acquire("b") for _ in range(2)] == [None, None]
    assert limiter.acquire("b") is not None
    assert limiter.acquire("a") is not None


def test_the_table_of_keys_is_bounded_dropping_the_least_recently_seen() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=3, clock=clock)
    for key in "abc":
        assert limiter.acquire(key) is None
    assert limiter.acquire("a") is not None  # "a" seen again: "b" is now the oldest
    assert limiter.acquire("d") is None  # drops "b"
    assert len(limiter) == 3
    assert limiter.acquire("a") is not None  # kept, still empty
    assert limiter.acquire("c") is not None  # kept
    assert limiter.acquire("b") is None  # dropped: starts full again (and drops "d")
    for i in range(10_000):
        limiter.acquire(f"k{i}")
    assert len(limiter) == 3


def test_rate_zero_is_no_limit() -> None:
    limiter = RateLimiter(rate=0.0, burst=1)
    assert all(limiter.acquire("a") is None for _ in range(10_000))
    assert len(limiter) == 0


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=-1.0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=float("nan"), burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1.0, burst=0)
    with pytest.raises(ValueError):
        RateLimiter(rate=1.0, burst=1, max_keys=0)


def test_threads_take_exactly_the_burst() -> None:
    clock = Clock()  # frozen: no refill while the threads run
    limiter = RateLimiter(rate=1.0, burst=1000, clock=clock)
    granted: list[int] = []

    def take() -> None:
        granted.append(sum(limiter.acquire("a") is None for _ in range(500)))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(granted) == 1000
