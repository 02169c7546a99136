"""The per-snapshot answer cache: least recently used out first, bounded in bytes."""

from __future__ import annotations

from api.snapshot import AnswerCache

OVERHEAD = AnswerCache.ENTRY_OVERHEAD


def test_the_least_recently_used_answer_goes_first() -> None:
    cache = AnswerCache(max_bytes=3 * (OVERHEAD + 100))
    for key in "abc":
        cache.put(key, ("popular", b"x" * 100))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", ("popular", b"x" * 100))
    assert cache.get("b") is None
    assert [cache.get(k) is not None for k in "acd"] == [True, True, True]
    assert cache.bytes == len(cache) * (OVERHEAD + 100) <= cache.max_bytes


def test_big_answers_take_more_room_and_too_big_ones_none() -> None:
    cache = AnswerCache(max_bytes=2 * OVERHEAD + 1_000)
    cache.put("small", ("popular", b"x" * 10))
    cache.put("big", ("popular", b"x" * 900))
    assert cache.get("small") is not None and cache.get("big") is not None
    cache.put("bigger", ("popular", b"x" * 990))  # pushes both older ones out
    assert cache.get("small") is None and cache.get("big") is None
    cache.put("huge", ("popular", b"x" * 10_000))  # larger than the whole cache: not kept
    assert cache.get("huge") is None and cache.get("bigger") is not None
    cache.put("bigger", ("session", b"y" * 5))  # replacing an entry frees its room
    assert cache.bytes == OVERHEAD + 5


def test_a_zero_sized_cache_keeps_nothing() -> None:
    cache = AnswerCache(max_bytes=0)
    cache.put("a", ("popular", b"[]"))
    assert cache.get("a") is None and len(cache) == 0
