"""What the service showed: every recommendation answer is an impression, logged to the lake.

An answer gets an `impression_id` (32 hex characters: a random 64-bit prefix drawn when the
process starts, then a 64-bit counter; unique across workers and restarts without any
coordination, and a few hundred nanoseconds to make). The route appends one tuple to an
in-memory buffer and returns; a background thread turns the buffer into JSON lines and writes
them to `landing/impressions/<UTC time>-<random>.jsonl` on the lake every
`RECSYS_IMPRESSIONS_FLUSH_SECONDS` (and at shutdown), where `recsys ingest` picks them up
exactly once into `raw/impressions/` (the line format is in `recsys.ingest`, which checks it).

The buffer is bounded (`RECSYS_IMPRESSIONS_BUFFER` impressions): when it is full, because the
lake is slow or down, the impression is dropped and counted
(`recsys_impressions_dropped_total`); a request never waits for the lake and never fails
because of the log. Impressions are a measurement, not a record someone relies on: events stay
the durable part (a `202` on `/v1/events` means stored). A file that cannot be written is kept
for the next attempt while there is room, then dropped and counted.

Files are written as the events' landing files are: on a local lake to a temporary name (not
matching `*.jsonl`, so ingest never reads half a file), fsynced and renamed; on S3 in one PUT.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from api.metrics import Metrics
from recsys.atomic import write_atomic
from recsys.ingest import IMPRESSIONS_LANDING_DIR as LANDING_DIR
from recsys.lake import Lake

log = logging.getLogger("api.impressions")

MAX_LINES_PER_FILE = 10_000

# one buffered impression: (served_at ms, impression_id, visitor_id, route, strategy, policy,
# experiment, variant, snapshot_version, model_version, anchor_item_id, items), `items` being
# the JSON array `items_json` rendered (once per cached answer, not once per impression)
Record = tuple[
    int,
    str,
    int | None,
    str,
    str,
    str,
    str | None,
    str | None,
    str,
    str,
    int | None,
    str,
]

_ITEM = '{{"item_id":{0:d},"rank":{1:d},"source":"{2}","team":{3}}}'.format


def items_json(item_ids: Sequence[int], sources: Sequence[str], teams: Sequence[str] | None) -> str:
    """An answer's items as the impression line writes them: `[{item_id, rank, source, team}]`.
    Sources and teams are the service's own names (fixed sets): nothing to escape."""
    return (
        "["
        + ",".join(
            _ITEM(
                int(item),
                rank,
                source,
                "null" if teams is None else f'"{teams[rank - 1]}"',
            )
            for rank, (item, source) in enumerate(zip(item_ids, sources, strict=True), start=1)
        )
        + "]"
    )


class ImpressionIds:
    """`impression_id`s: a random prefix per process and a counter (thread-safe: `next` on an
    `itertools.count` is atomic under the GIL)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def to_line(record: Record) -> str:
    """One impression as the JSON line `recsys ingest` reads (see the module doc).

    Assembled by formatting, not json.dumps of a dict (12.8 us an impression, which the writer
    thread spent holding the GIL the requests wait for): every string is a fixed name, a
    checked pattern (ids, experiment and variant names) or escaped once per snapshot
    (`_versions`).
    """
    (
        served_at,
        impression_id,
        visitor_id,
        route,
        strategy,
        policy,
        experiment,
        variant,
        snapshot_version,
        model_version,
        anchor_item_id,
        items,
    ) = record
    return _LINE % (
        impression_id,
        served_at,
        "null" if visitor_id is None else str(int(visitor_id)),
        route,
        strategy,
        policy,
        "null" if experiment is None else f'"{experiment}"',
        "null" if variant is None else f'"{variant}"',
        _versions(snapshot_version, model_version),
        "null" if anchor_item_id is None else str(int(anchor_item_id)),
        items,
    )


_LINE = (
    '{"impression_id":"%s","served_at":%d,"visitor_id":%s,"route":"%s","strategy":"%s",'
    '"policy":"%s","experiment":%s,"variant":%s,%s,"anchor_item_id":%s,"items":%s}'
)


@functools.lru_cache(maxsize=16)
def _versions(snapshot_version: str, model_version: str) -> str:
    """`"snapshot_version":..,"model_version":..`, escaped (once per snapshot)."""
    return (
        f'"snapshot_version":{json.dumps(snapshot_version)},'
        f'"model_version":{json.dumps(model_version)}'
    )


class ImpressionLog:
    """The bounded buffer and its writer thread (see the module doc). `enabled=False`: ids are
    still made (answers carry them), nothing is kept or written."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        capacity: int = 100_000,
        flush_seconds: float = 5.0,
        enabled: bool = True,
    ) -> None:
        self.lake: Lake | None = None  # given by start(), when the app starts
        self.metrics = metrics
        self.capacity = capacity
        self.flush_seconds = flush_seconds
        self.wanted = enabled and capacity > 0
        self.enabled = False  # until start(): a buffer nobody would write is not kept
        self.ids = ImpressionIds()
        self._buffer: collections.deque[Record] = collections.deque()
        self._pending: list[str] = []  # lines of a file that could not be written yet
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()  # one flush at a time (the thread, or stop())

    def record(self, record: Record) -> None:
        """Keep one impression for the next file, or drop and count it when the buffer is full.
        Never blocks, never raises into the request."""
        if not self.enabled:
            return
        if len(self._buffer) + len(self._pending) >= self.capacity:
            self.metrics.impressions_dropped.inc()
            return
        self._buffer.append(record)
        self.metrics.impressions_logged.inc()

    def start(self, lake: Lake) -> None:
        """Start writing to `lake` (the app's start-up)."""
        self.lake = lake
        self.enabled = self.wanted
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is buffered (shutdown) and stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.enabled:
            self.flush()
        self.enabled = False

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
            except Exception:  # the thread must outlive any one failure
                log.exception("impression log flush failed")

    def flush(self) -> int:
        """Write every buffered impression now (files of up to MAX_LINES_PER_FILE lines);
        return how many were written."""
        written = 0
        with self._write_lock:
            while self._pending or self._buffer:
                lines = self._pending
                self._pending = []
                while self._buffer and len(lines) < MAX_LINES_PER_FILE:
                    lines.append(to_line(self._buffer.popleft()))
                if not lines:
                    break
                try:
                    self._write(lines)
                except Exception as exc:
                    self.metrics.impression_write_failures.inc()
                    room = self.capacity - len(self._buffer)
                    kept = lines[: max(room, 0)]
                    if len(kept) < len(lines):
                        self.metrics.impressions_dropped.inc(len(lines) - len(kept))
                    self._pending = kept
                    log.warning(
                        "could not write %d impressions to %s (kept %d for the next attempt): %s",
                        len(lines),
                        LANDING_DIR,
                        len(kept),
                        str(exc)[:200],
                    )
                    break
                written += len(lines)
                self.metrics.impressions_written.inc(len(lines))
        return written

    def _write(self, lines: list[str]) -> None:
        assert self.lake is not None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        rel = f"{LANDING_DIR}/{stamp}-{uuid.uuid4().hex[:16]}.jsonl"
        text = "\n".join(lines) + "\n"
        if self.lake.is_s3:
            self.lake.write_text(rel, text)  # one PUT
            return
        target = Path(self.lake.root) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, text, durable=True)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
