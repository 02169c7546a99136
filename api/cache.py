"""The answer cache: encoded answers of a snapshot, bounded in bytes, least recently used out
first. One per loaded snapshot, so that a swap drops the old answers with the old data."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable

# (strategy, the rendered `items` array of the response, the same items as the impression log
# writes them): what an answer's response and its impression need
# (api.routes.recommendations.to_cached)
CachedAnswer = tuple[str, bytes, str]


class AnswerCache:
    """A least-recently-used cache of finished answers (`CachedAnswer`), bounded in
    bytes, owned by one snapshot.

    An entry counts what it holds: the answer (a k=100 answer is ten times a k=10 one) and its
    key, which carries the request's filters (an `exclude` list of 1,000 ids is a tuple of
    1,000 ints, ~36 kB, more than the answer itself).

    Living on the snapshot object makes it keyed by snapshot version by construction: a swap
    brings a new, empty cache, and the old one goes when the last request on the old snapshot
    ends.
    """

    # the dict slot, the value tuple and the bytes object's header, roughly
    ENTRY_OVERHEAD = 200

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[Hashable, tuple[CachedAnswer, int]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def size_of(cls, key: Hashable, value: CachedAnswer) -> int:
        """The bytes an entry is counted for: the rendered answer, its impression items (ASCII:
        a byte a character, plus the string's header) and the key."""
        return cls.ENTRY_OVERHEAD + len(value[1]) + 49 + len(value[2]) + _key_bytes(key)

    def get(self, key: Hashable) -> CachedAnswer | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            self._data.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: CachedAnswer) -> None:
        if self.max_bytes <= 0:
            return
        size = self.size_of(key, value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._data[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._data.popitem(last=False)
                self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._data)


def _key_bytes(key: object) -> int:
    """Memory a cache key holds: its tuples and their items (None and small ints are shared)."""
    if key is None:
        return 0
    if isinstance(key, tuple):
        return sys.getsizeof(key) + sum(_key_bytes(part) for part in key)
    return sys.getsizeof(key)
