"""Landing accepted events on the lake, durably, for the next `recsys ingest`.

Each accepted request becomes one file `landing/events/<UTC time>-<random>.csv` in the
RetailRocket `events.csv` layout (header included), so that ingest checks it with exactly the
rules it applies to `events.csv`. The name sorts by arrival and is unique across workers.

Retries: a request with an `Idempotency-Key` header lands as `landing/events/key-<hash>.csv`
instead, where the hash is of the caller (which API key sent it) and the key: two clients using
the same key do not meet. The first body sent under a key is the one kept: a retry with the
same body is answered 202 again without writing anything (before the next ingest, during it or
after it: the file is looked for in `landing/events/`, then in ingest's `_claimed/`, then in
`_ingested/`, the order in which ingest moves it), and a different body under a key already
used is a 409. On a local lake a lock (`flock`, one of 256 picked by the key's hash, shared by
every worker on the host) makes the look-up and the write one step. On S3 they are two, so two
different bodies racing under one key within the same moment may both be accepted (the later
one wins). Ingest never reads a file that may still change: it claims it first.

Durability: on a local lake the bytes go to a temporary name in the same folder (not matching
`*.csv`, so ingest never sees a partial file), are flushed and fsynced, renamed into place, and
the folder is fsynced so that the rename itself survives a crash. On S3 the file is one PUT,
which S3 stores durably and makes visible all at once. Only then does the API answer 202.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from recsys.atomic import write_atomic
from recsys.ingest import CLAIMED_DIR, INGESTED_DIR, LANDED_EVENTS, LANDING_DIR
from recsys.lake import Lake

# `events.csv`'s columns and the impression the event came from (empty when unknown)
HEADER = ",".join(LANDED_EVENTS.names)


def to_csv(rows: Sequence[tuple[int, int, str, int, int | None, str | None]]) -> str:
    """Validated events as `events.csv` text with the `impression_id` column (ids and
    timestamps are plain integers, impression ids 32 hex characters: nothing to quote)."""
    lines = [HEADER]
    for timestamp, visitor, event, item, transaction, impression in rows:
        lines.append(
            f"{timestamp},{visitor},{event},{item},{'' if transaction is None else transaction},"
            f"{impression or ''}"
        )
    return "\n".join(lines) + "\n"


def new_batch_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{uuid.uuid4().hex[:16]}"


# what an Idempotency-Key may hold (it never reaches a path: only its hash does)
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
LOCKS_DIR = f"{LANDING_DIR}/_locks"  # local lakes: the per-key locks (256 files at most)


class IdempotencyConflict(ValueError):
    """A body that differs from the one already accepted under the same key."""


def keyed_batch_id(caller: str, idempotency_key: str) -> str:
    """The batch id of every request that `caller` sends with this Idempotency-Key."""
    digest = hashlib.sha256(f"{caller}\0{idempotency_key}".encode()).hexdigest()
    return f"key-{digest[:32]}"


def landed_bytes(lake: Lake, batch_id: str) -> bytes | None:
    """The landed file of `batch_id` wherever ingest has got to with it; None if there is none.

    Looked for in the order ingest moves it (waiting, claimed, ingested), so that a move
    during the look-up cannot hide it: the look-up only ever follows the file forwards.
    """
    for folder in (LANDING_DIR, CLAIMED_DIR, INGESTED_DIR):
        try:
            return lake.read_bytes(f"{folder}/{batch_id}.csv")
        except FileNotFoundError:
            continue
    return None


@contextlib.contextmanager
def _key_lock(lake: Lake, batch_id: str) -> Iterator[None]:
    """One writer at a time per key on a local lake, across threads and processes."""
    if lake.is_s3:
        yield
        return
    folder = Path(lake.root) / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{batch_id[-2:]}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and with it the lock


def land_once(lake: Lake, batch_id: str, text: str) -> bool:
    """Land a keyed batch unless it already is: True if written now, False if the same body
    was already landed; IdempotencyConflict if a different one was."""
    body = text.encode("utf-8")
    with _key_lock(lake, batch_id):
        existing = landed_bytes(lake, batch_id)
        if existing is not None:
            if existing != body:
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used with a different body"
                )
            return False
        land(lake, batch_id, text)
        return True


def land(lake: Lake, batch_id: str, text: str) -> str:
    """Write one landing file durably; return its lake-relative path."""
    rel = f"{LANDING_DIR}/{batch_id}.csv"
    if lake.is_s3:
        lake.write_text(rel, text)  # one PUT: durable and atomic once it returns
        return rel
    target = Path(lake.root) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text, durable=True)  # two retries of one key may land at once
    return rel


class RecentBatches:
    """Digests of the batches each caller sent without a key in the last `seconds`, so that a
    repeat (most likely a retry that will land twice) can be flagged and counted. Bounded:
    the oldest are forgotten first; per worker process."""

    def __init__(self, seconds: float = 600.0, max_entries: int = 100_000) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, caller: str, text: str, now: float | None = None) -> bool:
        """Record the batch; True if the same caller sent the same body within the window."""
        now = time.monotonic() if now is None else now
        digest = hashlib.sha256(f"{caller}\0{text}".encode()).digest()
        with self._lock:
            while self._seen and (
                len(self._seen) >= self.max_entries
                or next(iter(self._seen.values())) < now - self.seconds
            ):
                self._seen.popitem(last=False)
            previous = self._seen.pop(digest, None)
            self._seen[digest] = now
        return previous is not None and previous >= now - self.seconds
