"""The ML steps over the warehouse, shared by the `recsys` command and the Airflow DAGs.

Time follows DESIGN.md's three windows, oldest first: history up to `t1` (features and ALS for
ranker training), `(t1, t2]` (labels for training and hyper-parameter validation), `(t2, end]`
(the test window; features and candidates recomputed as of `t2`). The published snapshot is
built as of `end`, the latest event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models_ml import candidates, evaluation
from models_ml.candidates import SOURCE_DTYPE
from models_ml.snapshot import POPULAR_PER_SCOPE
from recsys.atomic import write_atomic
from recsys.candidate_sources import SIMILAR_SEEDS, SOURCES
from recsys.ingest import NO_EVENTS_HINT, RAW_EVENTS, NoEvents, require_events
from recsys.lake import Lake
from recsys.ranking_features import KEY_COLUMNS
from recsys.settings import SEED, Settings
from recsys.warehouse import build, check_one_build, dbt_command

Say = Callable[[str], None]

CATEGORICAL_FEATURES = ("category_id", "root_category_id")


@contextmanager
def timed(say: Say, what: str) -> Iterator[None]:
    """Say how long the block took: every slow step of a run shows its time."""
    t0 = time.perf_counter()
    yield
    say(f"  {what} ({time.perf_counter() - t0:.1f}s)")


@dataclass(frozen=True)
class Windows:
    t1: datetime
    t2: datetime
    end: datetime

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat(sep=" ") for k, v in asdict(self).items()}


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def connect(settings: Settings, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """The warehouse, with the lake's filesystem: its staging views read the lake's Parquet."""
    con: duckdb.DuckDBPyConnection = Lake.from_settings(settings).duckdb(
        settings.warehouse_path, read_only=read_only
    )
    return con


def build_info(settings: Settings) -> dict[str, Any]:
    """The feature_builds row of the last build: version, cutoff and dbt invocation."""
    with connect(settings) as con:
        check_one_build(con)  # IncompleteBuild when a build stopped part-way
        row = con.execute(
            "select feature_version, cutoff_at, invocation_id from feature_builds"
        ).fetchone()
    if row is None:
        raise RuntimeError("feature_builds is empty: run `recsys build` first")
    return {"feature_version": row[0], "cutoff_at": row[1], "dbt_invocation_id": row[2]}


def latest_event(settings: Settings) -> datetime:
    """The time of the latest ingested event, read from the lake's raw events."""
    lake = Lake.from_settings(settings)
    require_events(lake)
    with lake.duckdb() as con:
        row = con.execute(
            f"select max(timestamp) from read_parquet('{lake.url(RAW_EVENTS)}')"
        ).fetchone()
    if row is None or row[0] is None:  # parts, but every row was rejected
        raise NoEvents(f"no events in {lake.url('raw/events/')} yet: {NO_EVENTS_HINT}")
    return datetime(1970, 1, 1) + timedelta(milliseconds=int(row[0]))


def windows(settings: Settings, test_days: float = 14, label_days: float = 14) -> Windows:
    """The three windows, ending at the latest event."""
    end = latest_event(settings)
    t2 = end - timedelta(days=test_days)
    return Windows(t1=t2 - timedelta(days=label_days), t2=t2, end=end)


def build_features(
    settings: Settings, cutoff: datetime | None, label_end: datetime | None, say: Say
) -> dict[str, Any]:
    """dbt build of the feature graph as of `cutoff` (labels up to `label_end`)."""
    extra: dict[str, object] | None = {"label_end_at": _ts(label_end)} if label_end else None
    say(
        f"dbt build as of {cutoff or 'the latest event'}"
        + (f", labels to {label_end}" if label_end else "")
    )
    with timed(say, "features built"):
        build(settings, cutoff_at=_ts(cutoff) if cutoff else None, extra_vars=extra, echo=False)
    return build_info(settings)


ACTIVE_DAYS = 30  # published lists: visitors seen in the last month


def candidate_visitors(settings: Settings, label_window: bool, min_items: int) -> np.ndarray:
    """Who gets ALS candidates.

    For the label window of the last build (training labels, or the test window): the visitors
    active in it (the dbt model label_window_visitors), since only they can have a label; every
    model is evaluated on the same visitors. Otherwise (the published lists): visitors with at
    least `min_items` items, seen in the last ACTIVE_DAYS days before the cutoff; everyone else
    is served by the session and popularity fallbacks.
    """
    with connect(settings) as con:
        if label_window:
            rows = con.execute("select visitor_id from label_window_visitors").fetchnumpy()
        else:
            rows = con.execute(
                f"""
                select visitor_id from visitor_features
                where n_distinct_items >= ? and recency_days <= {ACTIVE_DAYS}
                """,
                [min_items],
            ).fetchnumpy()
    # sorted: DuckDB returns rows in no set order, and a seeded sample of them must be the
    # same sample at every run
    return np.unique(np.asarray(rows["visitor_id"], dtype=np.int64))


def publish_items(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """(similar-item queries, available items) of a published snapshot: similar items for the
    items seen in the last 30 days (what a session is made of); candidates and similar items
    drawn from available items only (the others are never recommended)."""
    with connect(settings) as con:
        queries = con.execute(
            "select item_id from item_features where n_events_30d > 0"
        ).fetchnumpy()["item_id"]
        pool = con.execute(
            "select item_id from item_features where is_available is not false"
        ).fetchnumpy()["item_id"]
    return np.asarray(queries, dtype=np.int64), np.asarray(pool, dtype=np.int64)


def fit_candidates(
    settings: Settings,
    say: Say,
    label_window: bool = False,
    similar_queries: np.ndarray | None = None,
    pool_item_ids: np.ndarray | None = None,
    max_visitors: int | None = None,
    params: dict[str, Any] | None = None,
    show_progress: bool = True,
    seed: int = SEED,
) -> candidates.AlsResult:
    """ALS on the interactions mart; writes ml.als_candidates and ml.als_similar_items.

    Candidates go to `candidate_visitors` that ALS knows (with `label_window`: the visitors of
    the last build's label window), at most `max_visitors` of them drawn
    at random (seeded) when given. Similar items are searched for `similar_queries` and the
    visitors' latest items, whose similar items join the pool with popular ones
    (`candidates.add_sources`). All come from `pool_item_ids` when given
    (published lists: available items only).
    """
    with connect(settings) as con:
        interactions = candidates.read_interactions(con)  # row order varies: fit sorts
    if interactions.empty:
        raise RuntimeError("the interactions mart is empty: nothing to train ALS on")
    result = candidates.fit(interactions, params, show_progress=show_progress)
    del interactions
    say(
        f"  ALS fitted on {result.info['n_fitted_visitors']:,} visitors with "
        f"{result.params['min_fit_items']}+ items x {result.info['n_items']:,} items "
        f"({result.info['fitted_nnz']:,} interactions) in {result.fit_seconds:.1f}s"
    )
    visitors = candidate_visitors(settings, label_window, result.params["min_visitor_items"])
    visitors = visitors[np.isin(visitors, result.visitor_ids)]
    if max_visitors is not None and len(visitors) > max_visitors:
        rng = np.random.default_rng(seed)
        visitors = np.sort(rng.choice(visitors, max_visitors, replace=False))
    with timed(say, f"ALS candidates for {len(visitors):,} visitors"):
        recs = candidates.recommend(result, visitors, pool_item_ids, show_progress=show_progress)
    info = build_info(settings)
    with connect(settings) as con:
        seeds = latest_items(con, recs["visitor_id"].unique(), info["cutoff_at"])
        popular = evaluation.popular_items(con, POPULAR_PER_SCOPE)
    # similar items are searched for the asked items and the visitors' latest ones (the
    # `similar` candidates), and published for both: the API adds the same candidates
    queries = np.union1d(
        np.zeros(0, dtype=np.int64) if similar_queries is None else similar_queries,
        seeds["item_id"].to_numpy(np.int64),
    )
    with timed(say, f"similar items of {len(queries):,} items"):
        similar = candidates.similar_items(
            result, queries, pool_item_ids, show_progress=show_progress
        )
    with timed(say, "similar and popular candidates added"):
        pool = candidates.add_sources(recs, seeds, similar, np.asarray(popular, dtype=np.int64))
    by_source = pool["source"].value_counts().reindex(SOURCES, fill_value=0)
    with (
        connect(settings, read_only=False) as con,
        timed(
            say,
            f"wrote {len(pool):,} candidates for {recs['visitor_id'].nunique():,} visitors ("
            + ", ".join(f"{name} {count:,}" for name, count in by_source.items())
            + f") and {len(similar):,} similar-item pairs",
        ),
    ):
        candidates.write_tables(con, pool, similar, info["feature_version"])
    return result


def latest_items(
    con: duckdb.DuckDBPyConnection, visitor_ids: np.ndarray, cutoff: datetime
) -> pd.DataFrame:
    """(visitor_id, item_id) of each visitor's SIMILAR_SEEDS latest items, most recent first,
    ties by item id: the API's order (`api.recommend.latest_items`), in its precision (days
    before the cutoff as float32, the snapshot loader's expression)."""
    with con.cursor() as cur:
        cur.register("wanted_visitors", pd.DataFrame({"visitor_id": visitor_ids}))
        rows = cur.execute(
            """
            select
                visitor_id,
                item_id,
                cast((epoch(cast(? as timestamp)) - epoch(last_interaction_at)) / 86400.0
                    as double) as days,
            from interactions
            where visitor_id in (select visitor_id from wanted_visitors)
            """,
            [cutoff],
        ).fetchnumpy()
    visitors = np.asarray(rows["visitor_id"], dtype=np.int64)
    items = np.asarray(rows["item_id"], dtype=np.int64)
    days = np.nan_to_num(np.asarray(rows["days"], dtype=np.float64).astype(np.float32), nan=np.inf)
    order = np.lexsort((items, days, visitors))
    visitors, items = visitors[order], items[order]
    nth = np.arange(len(visitors)) - np.searchsorted(visitors, visitors)
    keep = nth < SIMILAR_SEEDS
    return pd.DataFrame({"visitor_id": visitors[keep], "item_id": items[keep]})


def build_ranking(
    settings: Settings, cutoff: datetime | None, label_end: datetime | None, say: Say
) -> None:
    """dbt build of the ranking models over the candidates just written."""
    extra: dict[str, object] = {"label_end_at": _ts(label_end)} if label_end else {}
    with timed(say, "ranking features built"):
        dbt_command(
            settings,
            ["build", "--select", "tag:ranking"],
            cutoff_at=_ts(cutoff) if cutoff else None,
            extra_vars=extra,
            echo=False,
        )


_RANKING_SQL = """
    select
        ranking_features.*,
        coalesce(ranking_labels.label, 0) as label,
    from ranking_features
    left join ranking_labels
        on ranking_features.visitor_id = ranking_labels.visitor_id
        and ranking_features.item_id = ranking_labels.item_id
"""


def ranking_frame(settings: Settings, visitor_ids: np.ndarray | None = None) -> pd.DataFrame:
    """ranking_features with the label of each pair (0 when no event in the label window), by
    visitor, ALS rank and item; only the rows of `visitor_ids` when given (the same rows, in
    the same order, as the whole frame has of them)."""
    order = (
        "order by ranking_features.visitor_id, ranking_features.als_rank, ranking_features.item_id"
    )
    with connect(settings) as con:
        check_one_build(con, layers=("marts", "ranking"))
        if visitor_ids is None:
            return con.execute(_RANKING_SQL + order).df()
        with con.cursor() as cur:
            cur.register(
                "wanted_visitors",
                pd.DataFrame({"visitor_id": np.asarray(visitor_ids, dtype=np.int64)}),
            )
            return cur.execute(
                _RANKING_SQL
                + "where ranking_features.visitor_id in (select visitor_id from wanted_visitors) "
                + order
            ).df()


def ranking_groups(settings: Settings) -> pd.DataFrame:
    """Per visitor of ranking_features (by visitor id): `n_candidates`, and `n_positive`, the
    candidates with a label (> 0): what choosing visitors needs, without their features."""
    with connect(settings) as con:
        check_one_build(con, layers=("marts", "ranking"))
        return con.execute(
            f"""
            select
                visitor_id,
                count(*) as n_candidates,
                count(*) filter (where label > 0) as n_positive,
            from ({_RANKING_SQL})
            group by visitor_id
            order by visitor_id
            """
        ).df()


# what evaluation and publishing keep of a scored candidate
SCORED_COLUMNS = (
    "visitor_id",
    "item_id",
    "als_rank",
    "is_seen",
    "candidate_source",
    "is_available",
    "has_purchased_item",
    "label",
)


def scored_candidates(
    settings: Settings, model: Any, say: Say, batch_rows: int = 500_000
) -> pd.DataFrame:
    """Every candidate of ranking_features scored by the ranker, SCORED_COLUMNS + `score`.

    The features are streamed from DuckDB `batch_rows` at a time and dropped once scored
    (scores do not depend on the other rows of a visitor), so memory stays bounded by the
    batch, not by visitors x candidates x features.
    """
    from models_ml import ranker

    parts = []
    with connect(settings) as con, timed(say, "candidates scored"):
        for batch in con.sql(_RANKING_SQL).to_arrow_reader(batch_rows):
            frame = batch.to_pandas()
            kept = frame[list(SCORED_COLUMNS)].assign(score=ranker.score(model, frame))
            # a real copy: a column selection shares the batch's blocks (pandas' copy on
            # write), which kept every batch's 40 columns alive (full scale: 6 GB)
            kept["candidate_source"] = _sources(batch.column("candidate_source"))
            parts.append(kept.copy(deep=True))
            del frame, kept
    if not parts:
        empty = ranking_frame(settings)[list(SCORED_COLUMNS)]
        return empty.assign(score=np.zeros(0, dtype=np.float64))
    scored = pd.concat(parts, ignore_index=True)
    del parts
    order = candidate_order(
        scored["visitor_id"].to_numpy(),
        scored["als_rank"].to_numpy(dtype=np.float64, na_value=np.nan),
        scored["item_id"].to_numpy(),
    )
    return scored.take(order).reset_index(drop=True)


def _sources(tags: pa.Array | pa.ChunkedArray) -> pd.Categorical:
    """`candidate_source` tags as SOURCE_DTYPE (an unknown or missing tag: missing), looked up
    by Arrow (`astype` hashed each batch's strings, ~3x slower)."""
    if not (pa.types.is_string(tags.type) or pa.types.is_large_string(tags.type)):
        tags = tags.cast(pa.large_string())  # string views, dictionaries: no index_in kernel
    codes = pc.index_in(tags, value_set=pa.array(SOURCE_DTYPE.categories.tolist(), tags.type))
    return pd.Categorical.from_codes(
        np.asarray(codes.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int8),
        dtype=SOURCE_DTYPE,
    )


def candidate_order(visitors: np.ndarray, ranks: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The row order of a stable sort by visitor, ALS rank (missing last) and item, as
    `DataFrame.sort_values` gives it; as one sort of an int64 key where the three fit in one
    (full scale, 12.7M candidates: pandas' three-key sort took 5-10 s, this ~1 s)."""
    visitors = np.asarray(visitors, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(visitors):
        return np.zeros(0, dtype=np.int64)
    missing = np.isnan(ranks)
    known = ranks[~missing]
    exact = bool(np.all(known == np.round(known))) and not np.any(np.isinf(known))
    if exact:
        low = float(known.min()) if len(known) else 0.0
        high = float(known.max()) if len(known) else 0.0
        # missing ranks after every known one
        rank_codes = np.where(missing, high - low + 1, ranks - low).astype(np.int64)
        key = evaluation.packed_key(visitors, rank_codes, items)
        if key is not None:
            # unique keys (a visitor's candidates are distinct items) sort the same way with
            # any algorithm; the quick one is ~3x faster than a stable one
            order = np.argsort(key)
            ordered = key[order]
            if not np.any(ordered[1:] == ordered[:-1]):
                return order
            return np.argsort(key, kind="stable")
    ranks = np.where(missing, np.inf, ranks)  # missing last (after +inf too: pandas' order)
    return np.lexsort((items, missing, ranks, visitors))


def feature_columns(frame: pd.DataFrame) -> list[str]:
    # what the ranker learns from: every ranking_features column but the keys
    return [c for c in frame.columns if c not in (*KEY_COLUMNS, "label")]


def split_visitors(
    visitor_ids: np.ndarray,
    shares: tuple[float, ...],
    seed: int,
    labelled: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Disjoint random groups of visitors with the given shares (seeded).

    With `labelled` (the visitors that have a positive), labelled and other visitors are split
    separately and every part gets at least one labelled visitor: on sparse data (the real
    sample has a handful) a random split could leave validation or calibration without any.
    """
    unique = np.unique(visitor_ids)
    if labelled is None:
        return _split(unique, shares, seed, min_each=0)
    is_labelled = np.isin(unique, labelled)
    with_label = _split(unique[is_labelled], shares, seed, min_each=1)
    without = _split(unique[~is_labelled], shares, seed, min_each=0)
    return [np.sort(np.concatenate(pair)) for pair in zip(with_label, without, strict=True)]


def _split(
    unique: np.ndarray, shares: tuple[float, ...], seed: int, min_each: int
) -> list[np.ndarray]:
    n = len(unique)
    if n < min_each * len(shares):
        raise ValueError(
            f"{n} visitors cannot fill {len(shares)} parts with at least {min_each} each"
        )
    sizes = [round(share * n) for share in shares[:-1]]
    sizes.append(n - sum(sizes))
    for i in range(len(sizes)):  # top up small parts from the largest one
        while sizes[i] < min_each:
            sizes[int(np.argmax(sizes))] -= 1
            sizes[i] += 1
    order = np.random.default_rng(seed).permutation(n)
    return [unique[part] for part in np.split(order, np.cumsum(sizes[:-1]))]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(payload, indent=2, default=str))
