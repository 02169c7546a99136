"""Every acknowledged event reaches `raw/` exactly once, however retries and ingests interleave.

Clients post batches with Idempotency-Keys, each several times (a retry whenever they like),
once more with another body under the same key, plus batches without a key, from several
threads at once, while ingest runs again and again beside them. Every event that got a 202
must be in `raw/events/` once, and nothing else. The rounds are bounded in count and time.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from recsys.atomic import write_atomic
from recsys.ingest import (
    IMPRESSIONS_LANDING_DIR,
    TableReport,
    ingest_landing,
    ingest_landing_impressions,
)
from recsys.lake import Lake
from tests.unit.api.conftest import make_settings

pytestmark = pytest.mark.integration

ROUNDS = 4
KEYS = 24  # keyed batches per round, each posted RETRIES times
RETRIES = 3
PLAIN = 12  # batches without a key per round
SECONDS = 60.0  # the whole test stops by then, finished or not (and fails if not)


def batch(visitor: int) -> list[dict[str, int | str]]:
    return [
        {"timestamp": 1442545187000 + i, "visitorid": visitor, "event": "view", "itemid": i}
        for i in range(1, 4)
    ]


def raw_events(lake: Lake) -> Counter[tuple[int, int]]:
    parts = [str(p) for p in (Path(lake.root) / "raw" / "events").glob("*.parquet")]
    if not parts:
        return Counter()
    rows = duckdb.sql(f"select visitorid, itemid from read_parquet({parts})").fetchall()
    return Counter((int(v), int(i)) for v, i in rows)


def one_round(client: TestClient, work: Path, round_number: int, deadline: float) -> set[int]:
    """Post every batch of the round from three threads while ingest runs in a fourth; the
    visitors whose batches were acknowledged."""
    lake: Lake = client.app.state.lake  # type: ignore[attr-defined]
    base = round_number * 1_000
    posts = [(base + k, f"round{round_number}-key{k}") for k in range(KEYS)] * RETRIES
    # a client that changes its body under a used key: whichever body came first is kept,
    # the other is a 409 (it once replaced the first, acknowledged one, or vanished in ingest)
    posts += [(base + 300 + k, f"round{round_number}-key{k}") for k in range(KEYS)]
    posts += [(base + 500 + p, None) for p in range(PLAIN)]
    random.Random(round_number).shuffle(posts)
    acknowledged: set[int] = set()
    lock = threading.Lock()
    done = threading.Event()

    def poster() -> None:
        while time.monotonic() < deadline:
            with lock:
                if not posts:
                    return
                visitor, key = posts.pop()
            headers = {"Idempotency-Key": key} if key else {}
            response = client.post("/v1/events", json=batch(visitor), headers=headers)
            assert response.status_code in (202, 409), response.text
            if response.status_code == 202:
                with lock:
                    acknowledged.add(visitor)

    def ingester() -> None:
        runs = 0
        while not done.is_set() and time.monotonic() < deadline:
            ingest_landing(lake, work / f"run-{runs}")
            runs += 1

    threads = [threading.Thread(target=poster) for _ in range(3)]
    ingesting = threading.Thread(target=ingester)
    ingesting.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
    done.set()
    ingesting.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
    assert not posts, "the posts did not finish in time"
    ingest_landing(lake, work / "last")
    return acknowledged


def test_retries_during_ingest_land_every_acknowledged_event_once(tmp_path: Path) -> None:
    deadline = time.monotonic() + SECONDS
    acknowledged: set[int] = set()
    with TestClient(create_app(make_settings(tmp_path / "data"))) as client:
        lake: Lake = client.app.state.lake  # type: ignore[attr-defined]
        landing = Path(lake.root) / "landing" / "events"
        for round_number in range(ROUNDS):
            acknowledged |= one_round(
                client, tmp_path / f"work{round_number}", round_number, deadline
            )
            # every acknowledged batch, once; nothing else; nothing left waiting
            expected = Counter({(v, i): 1 for v in acknowledged for i in range(1, 4)})
            assert raw_events(lake) == expected, f"round {round_number}"
            assert not list(landing.glob("*.csv")) and not list(landing.glob("_claimed/*.csv"))
            assert not list(landing.glob("_chunks/*"))
        assert len(acknowledged) == ROUNDS * (KEYS + PLAIN)  # one body per key, every plain one


def impression_line(n: int) -> str:
    return json.dumps(
        {
            "impression_id": f"{n:032x}",
            "served_at": 1_767_225_600_000 + n,
            "visitor_id": n,
            "route": "visitor",
            "strategy": "personalized",
            "policy": "ranker",
            "experiment": None,
            "variant": None,
            "snapshot_version": "20260101T000000Z-0123abcd",
            "model_version": "m1",
            "anchor_item_id": None,
            "items": [{"item_id": n, "rank": 1, "source": "ranker", "team": None}],
        }
    )


def test_impressions_landed_during_ingest_reach_raw_once(tmp_path: Path) -> None:
    """The API's impression files (written to a temporary name, then renamed) land while
    ingest runs again and again: every impression in `raw/impressions/` once, none rejected,
    nothing left waiting."""
    deadline = time.monotonic() + SECONDS
    lake = Lake(str(tmp_path / "lake"))
    landing = Path(lake.root) / IMPRESSIONS_LANDING_DIR
    landing.mkdir(parents=True)
    files, per_file = 60, 50
    done = threading.Event()
    reports: list[TableReport] = []

    def writer() -> None:
        for f in range(files):
            lines = [impression_line(f * per_file + i) for i in range(per_file)]
            write_atomic(landing / f"20260101T0000{f:02d}000000Z-{f:016x}.jsonl", "\n".join(lines))
            time.sleep(0.005)

    def ingester() -> None:
        runs = 0
        while not done.is_set() and time.monotonic() < deadline:
            report = ingest_landing_impressions(
                lake, tmp_path / f"run-{runs}", max_timestamp_ms=2**62
            )
            if report is not None:
                reports.append(report)
            runs += 1

    writing, ingesting = threading.Thread(target=writer), threading.Thread(target=ingester)
    ingesting.start()
    writing.start()
    writing.join(timeout=SECONDS)
    done.set()
    ingesting.join(timeout=SECONDS)
    last = ingest_landing_impressions(lake, tmp_path / "last", max_timestamp_ms=2**62)
    reports += [last] if last is not None else []
    assert sum(r.accepted for r in reports) == files * per_file
    assert sum(r.rejected for r in reports) == 0
    ids = duckdb.sql(
        f"select impression_id from read_parquet('{lake.url('raw/impressions/*.parquet')}')"
    ).fetchall()
    assert sorted(i for (i,) in ids) == [f"{n:032x}" for n in range(files * per_file)]
    assert not list(landing.glob("*.jsonl")) and not list(landing.glob("_claimed/*"))
    assert not list(landing.glob("_chunks/*"))
    assert len(list(landing.glob("_ingested/*.jsonl"))) == files
