"""Small, hand-made snapshots for the API tests, published the way the pipeline publishes them.

`World` holds the snapshot's tables as DataFrames (the schema of `models_ml/snapshot.py`, the
same column types); `default_world()` is a shop small enough to reason about in a test:

- items 1..60 in categories 10, 11, 12 (`10 + item % 3`), all under root category 1; items 7
  and 8 are unavailable; item 60 has no known category or availability;
- visitor 1001 has a published list (items 1..6 and 9..12, best first), ALS candidates 1..40
  in id order (7 and 8 unavailable, 20 bought: never to be recommended), history on 20 and 21;
- visitor 1002 has a list of three items (50, 51, 52) and candidates 50..55;
- visitor 2001 has history only (items 30 and 31, no list, no candidates);
- every item has five similar items (the next ones, wrapping around);
- popular items: 41..59 overall and, per category, that category's items of 41..59.

`publish_world` writes the file and publishes it with `models_ml.publish.publish(force=True)`,
so the tests load snapshots through the real path: LATEST, manifest, sha256, tables.
The ranker is a real CatBoost model, trained in a moment on random rows with the real feature
list (trained once per process).
"""

from __future__ import annotations

import functools
import json
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from api.features import FEATURE_COLUMNS
from models_ml.publish import Published, publish
from recsys.lake import Lake
from recsys.snapshots import sha256_file

CUTOFF = datetime(2015, 9, 18, 2, 59, 47)
CATEGORICAL = ["category_id", "root_category_id"]
TYPES: dict[str, dict[str, str]] = {
    "items": {
        "item_id": "bigint",
        "category_id": "bigint",
        "root_category_id": "bigint",
        "is_available": "boolean",
        "price": "double",
        "n_views_7d": "bigint",
        "n_views_30d": "bigint",
        "n_views_all": "bigint",
        "n_carts_all": "bigint",
        "n_purchases_all": "bigint",
        "cart_rate": "double",
        "purchase_rate": "double",
        "trend_7d": "double",
        "popularity_score": "double",
        "days_since_last_event": "double",
    },
    "visitors": {
        "visitor_id": "bigint",
        "n_events": "bigint",
        "n_sessions": "bigint",
        "n_distinct_items": "bigint",
        "n_carts": "bigint",
        "n_purchases": "bigint",
        "recency_days": "double",
        "tenure_days": "double",
        "top_category_id": "bigint",
        "top_category_share": "double",
    },
    "interactions": {
        "visitor_id": "bigint",
        "item_id": "bigint",
        "n_events": "bigint",
        "n_views": "bigint",
        "n_carts": "bigint",
        "n_purchases": "bigint",
        "weight": "double",
        "last_interaction_at": "timestamp",
    },
    "visitor_category_affinities": {
        "visitor_id": "bigint",
        "category_id": "bigint",
        "n_events": "bigint",
        "n_carts": "bigint",
        "affinity_share": "double",
        "affinity_score": "double",
        "last_event_at": "timestamp",
    },
    "recommendations": {
        "visitor_id": "bigint",
        "item_id": "bigint",
        "rank": "integer",
        "score": "double",
        "confidence": "double",
    },
    "candidates": {
        "visitor_id": "bigint",
        "item_id": "bigint",
        "als_score": "double",
        "als_rank": "integer",
        "is_seen": "boolean",
    },
    "similar_items": {
        "item_id": "bigint",
        "similar_item_id": "bigint",
        "similarity": "double",
        "similarity_rank": "integer",
    },
    "popular_items": {
        "category_id": "bigint",
        "item_id": "bigint",
        "score": "double",
        "rank": "bigint",
    },
}
# the order models_ml/snapshot.py writes the big tables in (the others: as they come)
ORDER = {
    "recommendations": "visitor_id, rank",
    "candidates": "visitor_id, als_rank",
    "similar_items": "item_id, similarity_rank",
}


def category_of(item: int) -> int:
    return 10 + item % 3


@dataclass
class World:
    tables: dict[str, pd.DataFrame]
    model_version: str = "fv1_test-catboost-42"
    feature_version: str = "fv1_test"
    cutoff_at: datetime = CUTOFF
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def default_world() -> World:
    n_items = 60
    item_ids = np.arange(1, n_items + 1)
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "category_id": pd.array(
                [None if i == 60 else category_of(i) for i in item_ids], dtype="Int64"
            ),
            "root_category_id": 1,
            "is_available": [None if i == 60 else i not in (7, 8) for i in item_ids],
            "price": item_ids * 1.5,
            "n_views_7d": item_ids % 7,
            "n_views_30d": item_ids % 11,
            "n_views_all": item_ids % 13 + 1,
            "n_carts_all": item_ids % 3,
            "n_purchases_all": item_ids % 2,
            "cart_rate": (item_ids % 3) / 10.0,
            "purchase_rate": [None if i % 5 == 0 else (i % 2) / 10.0 for i in item_ids],
            "trend_7d": np.linspace(-1, 1, n_items),
            "popularity_score": item_ids / 10.0,
            "days_since_last_event": item_ids / 2.0,
        }
    )
    visitors = pd.DataFrame(
        {
            "visitor_id": [1001, 1002, 2001],
            "n_events": [12, 5, 2],
            "n_sessions": [3, 2, 1],
            "n_distinct_items": [2, 3, 2],
            "n_carts": [1, 0, 0],
            "n_purchases": [1, 0, 0],
            "recency_days": [1.5, 3.0, 10.0],
            "tenure_days": [20.0, 9.0, 10.0],
            "top_category_id": pd.array([11, 12, None], dtype="Int64"),
            "top_category_share": [0.6, 1.0, None],
        }
    )
    t = CUTOFF
    interactions = pd.DataFrame(
        [
            (1001, 20, 3, 1, 1, 1, 5.5, t - timedelta(days=1, hours=3)),
            (1001, 21, 2, 2, 0, 0, 1.25, t - timedelta(days=2)),
            (1002, 50, 1, 1, 0, 0, 0.5, t - timedelta(days=3)),
            (2001, 30, 1, 1, 0, 0, 0.8, t - timedelta(days=10)),
            (2001, 31, 1, 1, 0, 0, 0.9, t - timedelta(days=9, minutes=7)),
        ],
        columns=list(TYPES["interactions"]),
    )
    affinities = pd.DataFrame(
        [
            (1001, 11, 7, 1, 0.6, 4.2, t - timedelta(days=1, hours=3)),
            (1001, 12, 5, 0, 0.4, 2.8, t - timedelta(days=2)),
            (1002, 12, 5, 0, 1.0, 0.5, t - timedelta(days=3)),
            (2001, 10, 1, 0, 0.5, 0.8, t - timedelta(days=10)),
            (2001, 11, 1, 0, 0.5, 0.9, t - timedelta(days=9)),
        ],
        columns=list(TYPES["visitor_category_affinities"]),
    )
    published = [1, 2, 3, 4, 5, 6, 9, 10, 11, 12]
    recommendations = pd.DataFrame(
        {
            "visitor_id": [1001] * len(published) + [1002] * 3,
            "item_id": [*published, 50, 51, 52],
            "rank": [*range(1, len(published) + 1), 1, 2, 3],
            "score": [*np.linspace(2.0, 1.0, len(published)), 0.9, 0.8, 0.7],
            "confidence": [*np.linspace(0.1, 0.5, len(published)), 0.1, 0.2, 0.3],
        }
    )
    cand_1001 = list(range(1, 41))
    cand_1002 = list(range(50, 56))
    candidates = pd.DataFrame(
        {
            "visitor_id": [1001] * len(cand_1001) + [1002] * len(cand_1002),
            "item_id": cand_1001 + cand_1002,
            "als_score": list(np.linspace(0.9, 0.1, len(cand_1001)))
            + list(np.linspace(0.8, 0.3, len(cand_1002))),
            "als_rank": list(range(1, len(cand_1001) + 1)) + list(range(1, len(cand_1002) + 1)),
            "is_seen": [i in (20, 21) for i in cand_1001] + [i == 50 for i in cand_1002],
        }
    )
    similar_rows = []
    for item in item_ids:
        for rank in range(1, 6):
            other = (item + rank - 1) % n_items + 1
            similar_rows.append((item, other, round(1.0 - rank / 10.0, 3), rank))
    similar = pd.DataFrame(similar_rows, columns=list(TYPES["similar_items"]))
    popular_rows = []
    overall = list(range(59, 40, -1))
    for rank, item in enumerate(overall, start=1):
        popular_rows.append((None, item, 100.0 - rank, rank))
    for category in (10, 11, 12):
        members = [i for i in overall if category_of(i) == category]
        for rank, item in enumerate(members, start=1):
            popular_rows.append((category, item, 100.0 - rank, rank))
    popular = pd.DataFrame(popular_rows, columns=list(TYPES["popular_items"]))
    return World(
        tables={
            "items": items,
            "visitors": visitors,
            "interactions": interactions,
            "visitor_category_affinities": affinities,
            "recommendations": recommendations,
            "candidates": candidates,
            "similar_items": similar,
            "popular_items": popular,
        }
    )


@functools.cache
def ranker_bytes(seed: int = 7) -> bytes:
    """A real CatBoostRanker with the real feature list, trained on random rows (~1 s)."""
    from catboost import CatBoostRanker, Pool

    from models_ml.ranker import feature_frame

    rng = np.random.default_rng(seed)
    n_groups, per_group = 40, 10
    n = n_groups * per_group
    data: dict[str, Any] = {}
    for name in FEATURE_COLUMNS:
        if name == "candidate_source":
            data[name] = rng.choice(["als", "revisit", "similar", "popular"], size=n)
        elif name in CATEGORICAL:
            data[name] = rng.integers(-1, 13, size=n)
        elif name.startswith(("is_", "has_")):
            data[name] = rng.random(n) < 0.5
        else:
            data[name] = rng.normal(size=n)
    frame = pd.DataFrame(data)
    # a signal the model can learn: better ALS rank and more pair events mean more relevant
    latent = -frame["als_rank"] + frame["pair_events"] + 0.3 * rng.normal(size=n)
    label = np.digitize(latent, [0.5, 1.5, 2.5])
    model = CatBoostRanker(
        loss_function="YetiRank",
        iterations=30,
        depth=3,
        random_seed=seed,
        thread_count=1,
        allow_writing_files=False,
        verbose=False,
    )
    model.fit(
        Pool(
            feature_frame(frame, list(FEATURE_COLUMNS), CATEGORICAL),
            label=label,
            group_id=np.repeat(np.arange(n_groups), per_group),
            cat_features=CATEGORICAL,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranker.cbm"
        model.save_model(str(path), format="cbm")
        return path.read_bytes()


def write_snapshot(world: World, path: Path) -> Path:
    """The snapshot file of `world`, with the schema and column types of the real one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with duckdb.connect(str(path)) as con:
        for name, types in TYPES.items():
            frame = world.tables[name]
            con.register("frame", frame)
            columns = ", ".join(f"cast({c} as {t}) as {c}" for c, t in types.items())
            order = f" order by {ORDER[name]}" if name in ORDER else ""
            con.execute(f"create table {name} as select {columns} from frame{order}")
            con.unregister("frame")
        ranker_meta = {
            "features": list(FEATURE_COLUMNS),
            "cat_features": CATEGORICAL,
            "params": {"loss_function": "YetiRank", "iterations": 30},
            "seed": 7,
            "feature_version": world.feature_version,
        }
        con.execute("create table ranker (name varchar, model blob, metadata json)")
        con.execute(
            "insert into ranker values ('catboost', ?, ?)",
            [ranker_bytes(), json.dumps(ranker_meta)],
        )
        metadata = {
            "feature_version": world.feature_version,
            "cutoff_at": str(world.cutoff_at),
            "model_version": world.model_version,
            **world.extra_metadata,
        }
        con.execute("create table metadata (key varchar primary key, value varchar)")
        con.executemany(
            "insert into metadata values (?, ?)",
            [(k, json.dumps(v, default=str)) for k, v in sorted(metadata.items())],
        )
        con.execute("checkpoint")
    return path


_clock = {"now": datetime(2026, 1, 1, tzinfo=UTC)}


def _next_time() -> datetime:
    _clock["now"] += timedelta(minutes=1)
    return _clock["now"]


def manifest_of(world: World) -> dict[str, Any]:
    return {
        "feature_version": world.feature_version,
        "cutoff_at": str(world.cutoff_at),
        "model_version": world.model_version,
        "metrics": {},
    }


def publish_file(
    lake: Lake, path: Path, world: World | None = None, now: datetime | None = None
) -> Published:
    """Publish a snapshot file as the pipeline does (`force`: no metrics to gate on)."""
    return publish(
        lake, path, manifest_of(world or default_world()), force=True, now=now or _next_time()
    )


def publish_world(lake: Lake, world: World | None = None, now: datetime | None = None) -> Published:
    """Write `world` (default: `default_world()`) and publish it; each call a newer version."""
    world = world or default_world()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_snapshot(world, Path(tmp) / "snapshot.duckdb")
        return publish_file(lake, path, world, now)


def publish_unchecked(
    lake: Lake,
    path: Path | None,
    version: str,
    manifest: dict[str, Any] | None = None,
    latest: bool = True,
) -> str:
    """What a broken publisher might leave: the file (if any), a manifest (if given) and LATEST,
    without `publish`'s checks."""
    base = f"snapshots/{version}"
    if path is not None:
        lake.put(path, f"{base}/snapshot.duckdb")
    if manifest is not None:
        digest = sha256_file(path) if path is not None else "0" * 64
        lake.write_text(
            f"{base}/manifest.json",
            json.dumps({"version": version, "sha256": digest, **manifest}, default=str),
        )
    if latest:
        lake.write_text("snapshots/LATEST", version + "\n")
    return version


def new_version() -> str:
    return f"{_next_time():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
