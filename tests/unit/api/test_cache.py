"""The per-snapshot answer cache: least recently used out first, bounded in bytes."""

from __future__ import annotations

from api.cache import AnswerCache, CachedAnswer


def entry(strategy: str, items_json: bytes, n_items: int = 0) -> CachedAnswer:
    """A cached answer of `n_items` items rendered as `items_json`."""
    return (strategy, items_json, "[" + ",".join(["{}"] * n_items) + "]")


def test_the_least_recently_used_answer_goes_first() -> None:
    cache = AnswerCache(max_bytes=3 * AnswerCache.size_of("a", entry("popular", b"x" * 100)))
    for key in "abc":
        cache.put(key, entry("popular", b"x" * 100))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", entry("popular", b"x" * 100))
    assert cache.get("b") is None
    assert [cache.get(k) is not None for k in "acd"] == [True, True, True]
    assert cache.bytes == sum(AnswerCache.size_of(k, entry("popular", b"x" * 100)) for k in "acd")
    assert cache.bytes <= cache.max_bytes


def test_big_answers_take_more_room_and_too_big_ones_none() -> None:
    cache = AnswerCache(max_bytes=2 * AnswerCache.size_of("small", entry("", b"")) + 1_000)
    cache.put("small", entry("popular", b"x" * 10))
    cache.put("big", entry("popular", b"x" * 900))
    assert cache.get("small") is not None and cache.get("big") is not None
    cache.put("bigger", entry("popular", b"x" * 990))  # pushes both older ones out
    assert cache.get("small") is None and cache.get("big") is None
    cache.put("huge", entry("popular", b"x" * 10_000))  # larger than the whole cache: not kept
    assert cache.get("huge") is None and cache.get("bigger") is not None
    cache.put("bigger", entry("session", b"y" * 5))  # replacing an entry frees its room
    assert cache.bytes == AnswerCache.size_of("bigger", entry("session", b"y" * 5))


def test_a_zero_sized_cache_keeps_nothing() -> None:
    cache = AnswerCache(max_bytes=0)
    cache.put("a", entry("popular", b"[]"))
    assert cache.get("a") is None and len(cache) == 0


def test_the_key_counts_too() -> None:
    """400 requests excluding 1,000 distinct ids each: the keys alone are ~15 MB, so a cache
    counting only the answers grew far past its budget."""
    import gc
    import tracemalloc

    budget = 2_000_000
    cache = AnswerCache(max_bytes=budget)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for request in range(400):
            excluded = tuple(range(10**9 + request * 1_000, 10**9 + (request + 1) * 1_000))
            cache.put((1001, 10, None, excluded), entry("personalized", b"x" * 1_500))
            del excluded
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert cache.bytes <= budget
    assert 20 <= len(cache) <= 80  # about budget / 37 kB per entry
    assert held < 1.3 * budget, (
        f"the cache holds {held / 1e6:.1f} MB for a {budget / 1e6} MB budget"
    )


def test_the_logged_items_count_too() -> None:
    """An answer's items as the impression log writes them are kept beside its JSON: they
    are counted."""
    small = AnswerCache.size_of("a", ("personalized", b"x" * 100, "[]"))
    large = AnswerCache.size_of("a", ("personalized", b"x" * 100, "x" * 600))
    assert large - small == 598
