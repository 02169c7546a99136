"""Live performance of published snapshots in the warehouse (dbt model live_performance), on a
lake written by hand.

The lake holds raw events (ingest's own schema) and the published lists `recsys monitor`
exports (<lake>/monitoring/published/<snapshot_version>.parquet). Hand-made visitors pin the
rules (day boundaries, events at or before the cutoff, visitors without a list, the ideal DCG
cut at 10); a few hundred random visitors over three snapshots are compared, per snapshot and
day, with NDCG@10 and recall@20 computed here in plain numpy, which in turn agree with the
offline definition (models_ml.metrics.evaluate). One dbt build serves the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models_ml.metrics import evaluate
from recsys.ingest import EVENTS, raw_schema
from recsys.settings import Settings
from recsys.warehouse import dbt_command

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
CUTOFFS = {
    "20150601T000000Z-s1": datetime(2015, 6, 1),
    "20150603T120000Z-s2": datetime(2015, 6, 3, 12),
    "20150605T000000Z-s3": datetime(2015, 6, 5),  # its only visitor has no event after it
}
OFFLINE = {  # (ndcg@10, recall@20) of each snapshot's manifest
    "20150601T000000Z-s1": (0.08, 0.15),
    "20150603T120000Z-s2": (0.0, 0.12),  # an offline NDCG of 0: no ratio
    "20150605T000000Z-s3": (0.06, 0.1),
}
# each snapshot's file with another timestamp unit, as different writers may leave them
TIME_UNITS = {"20150601T000000Z-s1": "us", "20150603T120000Z-s2": "ns", "20150605T000000Z-s3": "ms"}
LATEST = datetime(2015, 6, 6, 5, 0)  # the lake's latest event: day 5 of s1 is partial
LATEST_VISITOR = 7  # makes that event, has no list
S1, S2, S3 = CUTOFFS
SECOND, HOUR, DAY = timedelta(seconds=1), timedelta(hours=1), timedelta(days=1)
MS = timedelta(milliseconds=1)
BUILD = ["build", "--select", "+live_performance", "--indirect-selection", "cautious"]


def ms(at: datetime) -> int:
    return int(at.replace(tzinfo=UTC).timestamp() * 1000)


@dataclass
class Lake:
    events: list[tuple[int, int, str, int]] = field(default_factory=list)  # ms, visitor, type, item
    lists: dict[str, dict[int, list[int]]] = field(default_factory=dict)  # snapshot -> visitor

    def event(self, visitor: int, at: datetime, item: int, kind: str = "view") -> None:
        self.events.append((ms(at), visitor, kind, item))

    def write(self, root: Path, published: bool = True) -> None:
        (root / "raw" / "events").mkdir(parents=True)
        rows = [
            {"timestamp": t, "visitorid": v, "event": kind, "itemid": item}
            | {"transactionid": i if kind == "transaction" else None, "impression_id": None}
            for i, (t, v, kind, item) in enumerate(self.events)
        ]
        table = pa.Table.from_pylist(rows, schema=raw_schema(EVENTS))
        pq.write_table(table, root / "raw" / "events" / "events.parquet")
        if not published:
            return
        folder = root / "monitoring" / "published"
        folder.mkdir(parents=True)
        for version, lists in self.lists.items():
            schema = pa.schema(
                [
                    ("snapshot_version", pa.string()),
                    ("cutoff_at", pa.timestamp(TIME_UNITS[version])),
                    ("visitor_id", pa.int64()),
                    ("item_id", pa.int64()),
                    ("rank", pa.int32()),
                    ("offline_ndcg_at_10", pa.float64()),
                    ("offline_recall_at_20", pa.float64()),
                ]
            )
            ndcg, recall = OFFLINE[version]
            rows = [
                {"snapshot_version": version, "cutoff_at": CUTOFFS[version], "visitor_id": v}
                | {"item_id": item, "rank": rank, "offline_ndcg_at_10": ndcg}
                | {"offline_recall_at_20": recall}
                for v, items in lists.items()
                for rank, item in enumerate(items, start=1)
            ]
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{version}.parquet")


def hand_made(lake: Lake) -> None:
    """Visitors 1..6: one rule each."""
    c1 = CUTOFFS[S1]
    lake.lists[S1] = {}
    # 1: hits at ranks 1 and 6 among 3 relevant items (999 is not listed); repeated events on
    # an item and its event types make one relevant item
    lake.lists[S1][1] = list(range(100, 120))
    lake.event(1, c1 + HOUR, 100)
    lake.event(1, c1 + 2 * HOUR, 105, "addtocart")
    lake.event(1, c1 + 3 * HOUR, 105)
    lake.event(1, c1 + 4 * HOUR, 999, "transaction")
    # 2: day boundaries: at the cutoff is history; exactly 24 h later is day 0; 1 ms after is
    # day 1; events before the cutoff on listed items change nothing
    lake.lists[S1][2] = list(range(200, 220))
    lake.event(2, c1 - DAY, 203)
    lake.event(2, c1 - SECOND, 204)
    lake.event(2, c1, 200)
    lake.event(2, c1 + DAY, 201)
    lake.event(2, c1 + DAY + MS, 202)
    # 3: no list, events after the cutoff on other visitors' listed items: not counted
    lake.event(3, c1 + HOUR, 100)
    lake.event(3, c1 + DAY + HOUR, 201)
    # 4: a list and no event after the cutoff: not counted; s3's only visitor, so s3's days
    # (which other visitors' events make) have no visitor at all
    lake.lists[S1][4] = list(range(400, 420))
    lake.event(4, c1 - HOUR, 400)
    lake.lists[S3] = {4: list(range(400, 420))}
    # 5: 25 relevant items on day 1, 12 of them at ranks 1..12: the ideal DCG stops at 10,
    # recall divides by 25
    lake.lists[S1][5] = [*range(500, 512), *range(600, 608)]
    for i in range(25):
        lake.event(5, c1 + DAY + (i + 1) * 10 * SECOND, 500 + i)
    # 6: a relevant item at rank 11 counts for recall@20, not for NDCG@10
    lake.lists[S1][6] = list(range(700, 720))
    lake.event(6, c1 + 2 * DAY + HOUR, 710)
    lake.event(LATEST_VISITOR, LATEST, 1)


def random_visitors(lake: Lake, rng: np.random.Generator) -> None:
    """Visitors 1000..1299 with lists in s1 (all) and s2 (half), events from 10 days before
    s1's cutoff to the latest event, about a third of them on listed items (so there are hits)."""
    lake.lists[S2] = {}
    start, span = CUTOFFS[S1] - 10 * DAY, (LATEST - CUTOFFS[S1] + 10 * DAY).total_seconds()
    for visitor in range(1000, 1300):
        listed = [int(x) for x in rng.choice(300, size=20, replace=False) + 10_000]
        lake.lists[S1][visitor] = listed
        if visitor % 2:
            lake.lists[S2][visitor] = [int(x) for x in rng.permutation(listed)]
        for _ in range(int(rng.integers(0, 25))):
            at = start + timedelta(seconds=float(rng.uniform(0, span)))
            at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # ms, as the lake has
            item = (
                listed[int(rng.integers(0, 20))]
                if rng.random() < 0.35
                else 10_000 + int(rng.integers(0, 300))
            )
            kind = str(rng.choice(["view", "view", "view", "addtocart", "transaction"]))
            lake.event(visitor, min(at, LATEST), item, kind)


# -- the reference: plain numpy ---------------------------------------------------------------


def truth_by_day(lake: Lake, version: str) -> dict[int, dict[int, set[int]]]:
    """day -> visitor -> relevant items, for every event after the snapshot's cutoff (every
    visitor: the days with an event are the model's rows)."""
    cut = ms(CUTOFFS[version])
    days: dict[int, dict[int, set[int]]] = {}
    for t, visitor, _, item in lake.events:
        if t > cut:
            day = (t - cut - 1) // DAY_MS  # (cutoff + d days, cutoff + d + 1 days]
            days.setdefault(day, {}).setdefault(visitor, set()).add(item)
    return days


def ndcg_recall(listed: list[int], relevant: set[int]) -> tuple[float, float]:
    hits = np.array([item in relevant for item in listed[:20]] + [False] * 20)[:20]
    discount = 1.0 / np.log2(np.arange(2, 12))
    ideal = discount[: min(10, len(relevant))].sum()
    return float(hits[:10] @ discount / ideal), float(hits.sum() / len(relevant))


def reference(lake: Lake) -> dict[tuple[str, int], dict]:
    out = {}
    for version, lists in lake.lists.items():
        for day, truth in truth_by_day(lake, version).items():
            scored = [ndcg_recall(lists[v], items) for v, items in truth.items() if v in lists]
            ndcg = float(np.mean([s[0] for s in scored])) if scored else None
            offline = OFFLINE[version][0]
            out[(version, day)] = {
                "n_visitors": len(scored),
                "ndcg_at_10": ndcg,
                "recall_at_20": float(np.mean([s[1] for s in scored])) if scored else None,
                "ndcg_ratio": ndcg / offline if ndcg is not None and offline else None,
            }
    return out


@dataclass
class Built:
    lake: Lake
    rows: dict[tuple[str, int], dict]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    data_dir = tmp_path_factory.mktemp("live_performance") / "data"
    settings = Settings(recsys_data_dir=data_dir, recsys_lake_uri=None, _env_file=None)  # type: ignore[call-arg]
    lake = Lake()
    hand_made(lake)
    random_visitors(lake, np.random.default_rng(5))
    lake.write(data_dir / "lake")
    dbt_command(settings, BUILD, echo=False)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        cursor = con.execute("select * from live_performance")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    yield Built(lake, {(r["snapshot_version"], r["day"]): r for r in rows})


def test_the_columns_are_the_contract(built: Built) -> None:
    row = next(iter(built.rows.values()))
    assert list(row) == [
        "snapshot_version",
        "cutoff_at",
        "day",
        "day_start_at",
        "day_end_at",
        "is_complete_day",
        "n_visitors",
        "ndcg_at_10",
        "recall_at_20",
        "offline_ndcg_at_10",
        "offline_recall_at_20",
        "ndcg_ratio",
    ]


def test_every_snapshot_and_day_matches_numpy(built: Built) -> None:
    expected = reference(built.lake)
    assert set(built.rows) == set(expected)
    for key, want in expected.items():
        got = built.rows[key]
        assert got["n_visitors"] == want["n_visitors"], key
        for name in ("ndcg_at_10", "recall_at_20", "ndcg_ratio"):
            if want[name] is None:
                assert got[name] is None, (key, name)
            else:
                assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-15), (key, name)
    # the random visitors make hits on most days: the comparison is not one of zeros
    assert sum(1 for r in expected.values() if r["ndcg_at_10"]) >= 8


def test_the_reference_is_the_offline_definition(built: Built) -> None:
    """models_ml.metrics.evaluate on the same lists and days: what the offline evaluation
    computes for a window, here a day (visitors restricted to those with a list, as the
    offline evaluation restricts to visitors with candidates)."""
    for version, lists in built.lake.lists.items():
        for day, truth in truth_by_day(built.lake, version).items():
            listed = {v: items for v, items in truth.items() if v in lists}
            if not listed:
                continue
            offline = evaluate(lists, listed, ks=(10, 20))
            got = built.rows[(version, day)]
            assert got["ndcg_at_10"] == pytest.approx(offline["ndcg@10"], rel=1e-12)
            assert got["recall_at_20"] == pytest.approx(offline["recall@20"], rel=1e-12)


def test_days_are_left_open_24_hours_from_the_cutoff(built: Built) -> None:
    cutoff = CUTOFFS[S1]
    days = sorted(day for version, day in built.rows if version == S1)
    assert days == list(range(6))  # up to the latest event, 2015-06-06 05:00 (day 5)
    for day in days:
        row = built.rows[(S1, day)]
        assert row["cutoff_at"] == cutoff
        assert row["day_start_at"] == cutoff + day * DAY
        assert row["day_end_at"] == cutoff + (day + 1) * DAY
        assert row["is_complete_day"] == (day < 5)
        assert (row["offline_ndcg_at_10"], row["offline_recall_at_20"]) == OFFLINE[S1]
    # the reference's rule for visitor 2, which the model matches (the figures of days 0 and 1
    # would differ otherwise: 201 and 202 are listed): the event at the cutoff is history, the
    # one exactly 24 h later is day 0's, 1 ms later day 1's
    assert truth_by_day(built.lake, S1)[0][2] == {201}
    assert truth_by_day(built.lake, S1)[1][2] == {202}


def test_hand_computed_visitors(built: Built) -> None:
    lists = built.lake.lists[S1]
    # visitor 1: hits at ranks 1 and 6 of 3 relevant items
    ndcg, recall = ndcg_recall(lists[1], {100, 105, 999})
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert ndcg == pytest.approx((1 + 1 / np.log2(7)) / ideal)
    assert recall == pytest.approx(2 / 3)
    # visitor 5: 12 hits in the top 12 of 25 relevant items: a perfect NDCG@10 (the ideal list
    # stops at 10), recall 12 / 25
    assert ndcg_recall(lists[5], set(range(500, 525))) == pytest.approx((1.0, 12 / 25))
    # visitor 6: rank 11 is a recall hit, not an NDCG one
    assert ndcg_recall(lists[6], {710}) == (0.0, 1.0)


def test_visitors_without_a_list_and_history_change_nothing(built: Built) -> None:
    """The reference without visitor 3 (no list) and without every event at or before s1's
    cutoff (the earliest) gives the same figures as the model, which read them all."""
    quiet = Lake(
        events=[
            e
            for e in built.lake.events
            if e[1] != 3 and e[0] > ms(CUTOFFS[S1])  # s1's is the earliest cutoff
        ],
        lists=built.lake.lists,
    )
    without = reference(quiet)
    for key, want in without.items():
        got = built.rows[key]
        assert got["n_visitors"] == want["n_visitors"]
        if want["ndcg_at_10"] is not None:
            assert got["ndcg_at_10"] == pytest.approx(want["ndcg_at_10"], rel=1e-12)
            assert got["recall_at_20"] == pytest.approx(want["recall_at_20"], rel=1e-12)


def test_a_snapshot_whose_visitors_did_nothing_has_days_without_figures(built: Built) -> None:
    rows = [r for (version, _), r in built.rows.items() if version == S3]
    assert [r["day"] for r in sorted(rows, key=lambda r: r["day"])] == [0, 1]
    for row in rows:
        assert row["n_visitors"] == 0
        assert row["ndcg_at_10"] is None and row["recall_at_20"] is None
        assert row["ndcg_ratio"] is None


def test_without_published_lists_the_model_is_empty(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(recsys_data_dir=data_dir, recsys_lake_uri=None, _env_file=None)  # type: ignore[call-arg]
    lake = Lake()
    lake.event(1, datetime(2015, 6, 1), 10)
    lake.event(1, datetime(2015, 6, 2), 11)
    lake.write(data_dir / "lake", published=False)  # no monitoring/ folder at all
    dbt_command(settings, BUILD, echo=False)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("select count(*) from live_performance").fetchone() == (0,)
        assert con.execute(
            "select count(*) from staging.stg_monitoring__published_lists"
        ).fetchone() == (0,)
