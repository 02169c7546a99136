"""Build the snapshot file the API serves: everything it needs, in one DuckDB database.

Tables (the API's contract; `recsys.snapshots.SNAPSHOT_TABLES`):
- `recommendations`: top-K per known visitor (visitor_id, item_id, rank, score, confidence),
  never an item the visitor bought or an unavailable one;
- `candidates`: the ALS candidates of those visitors (visitor_id, item_id, als_score, als_rank,
  is_seen), to rank again at request time with the similar and popular candidates the API adds
  (`recsys.candidate_sources`) and a session's items;
- `items`, `visitors`, `interactions`, `visitor_category_affinities`: the features the ranker
  needs to score candidates at request time (a subset of the marts, as of the cutoff; the API
  computes ranking_features' columns from them as dbt does);
- `similar_items`: top-M similar items per item (ALS item factors);
- `popular_items`: items not known to be unavailable by recent popularity, overall (category_id
  null) and per category, top 100 each: the evaluation's popularity baseline, one definition
  (`models_ml.evaluation.POPULAR_WHERE`, `POPULAR_ORDER`);
- `ranker`: the CatBoost model file and its metadata (features, parameters, versions);
- `metadata`: key/value pairs (feature version, cutoff, model versions).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models_ml.evaluation import POPULAR_ORDER, POPULAR_WHERE, order_within_groups
from recsys.lake import connect_duckdb
from recsys.ranking_features import ITEM_FEATURES, VISITOR_FEATURES

TOP_K = 50
POPULAR_PER_SCOPE = 100


def top_recommendations(
    frame: pd.DataFrame,
    scores: np.ndarray,
    confidence: Callable[[np.ndarray], np.ndarray],
    top_k: int = TOP_K,
) -> pd.DataFrame:
    """Each visitor's `top_k` available candidates they have not bought, best score first
    (ties in the frame's order): visitor_id, item_id, rank (from 1), score, confidence."""
    keep = (frame["is_available"] & ~frame["has_purchased_item"]).to_numpy(dtype=bool)
    visitors = frame["visitor_id"].to_numpy()[keep]
    items = frame["item_id"].to_numpy()[keep]
    kept_scores = np.asarray(scores, dtype=np.float64)[keep]
    order = order_within_groups(visitors, -kept_scores)
    visitors, items, kept_scores = visitors[order], items[order], kept_scores[order]
    starts = np.r_[True, visitors[1:] != visitors[:-1]] if len(visitors) else np.zeros(0, bool)
    position = np.arange(len(visitors))
    rank = position - np.maximum.accumulate(np.where(starts, position, 0)) + 1
    top = rank <= top_k
    return pd.DataFrame(
        {
            "visitor_id": visitors[top],
            "item_id": items[top],
            "rank": rank[top],
            "score": kept_scores[top],
            "confidence": confidence(rank[top]),
        }
    )


def build_snapshot(
    warehouse: Path,
    out: Path,
    frame: pd.DataFrame,
    scores: np.ndarray,
    confidence: Callable[[np.ndarray], np.ndarray],
    ranker_file: Path,
    ranker_metadata: dict[str, Any],
    metadata: dict[str, Any],
    top_k: int = TOP_K,
) -> dict[str, int]:
    """Write the snapshot database to `out` (replaced); return its row counts."""
    out.unlink(missing_ok=True)
    recommendations = top_recommendations(frame, scores, confidence, top_k)

    with connect_duckdb(out) as con:
        con.execute(f"attach '{warehouse}' as wh (read_only)")
        con.execute(
            # the mart columns that ITEM_FEATURES and VISITOR_FEATURES name (what the API
            # turns into ranking features), under their mart names
            f"""
            create table items as
            select item_id, category_id, root_category_id, is_available,
                {", ".join(column for column, _ in ITEM_FEATURES.values())},
            from wh.item_features
            """
        )
        con.execute(
            f"""
            create table visitors as
            select visitor_id, top_category_id,
                {", ".join(column for column, _ in VISITOR_FEATURES.values())},
            from wh.visitor_features
            """
        )
        con.execute(
            """
            create table interactions as
            select visitor_id, item_id, n_events, n_views, n_carts, n_purchases, weight,
                last_interaction_at,
            from wh.interactions
            """
        )
        con.execute(
            """
            create table visitor_category_affinities as
            select visitor_id, category_id, n_events, n_carts, affinity_share, affinity_score,
                last_event_at,
            from wh.visitor_category_affinities
            """
        )
        con.execute(
            """
            create table candidates as
            select visitor_id, item_id, als_score, als_rank, is_seen,
            from wh.ml.als_candidates
            -- ALS's own list: the API adds the similar and popular candidates at request time
            -- (recsys.candidate_sources), from the similar and popular lists published here
            where source in ('als', 'revisit')
            order by visitor_id, als_rank
            """
        )
        con.execute(
            """
            create table similar_items as
            select item_id, similar_item_id, similarity, similarity_rank,
            from wh.ml.als_similar_items
            order by item_id, similarity_rank
            """
        )
        con.execute(
            f"""
            create table popular_items as
            with ranked as (
                select
                    category_id,
                    item_id,
                    popularity_score as score,
                    row_number() over (
                        partition by category_id
                        order by {POPULAR_ORDER}
                    ) as rank,
                from wh.item_features
                where {POPULAR_WHERE}
            ),
            overall as (
                select
                    cast(null as bigint) as category_id,
                    item_id,
                    popularity_score as score,
                    row_number() over (
                        order by {POPULAR_ORDER}
                    ) as rank,
                from wh.item_features
                where {POPULAR_WHERE}
            )
            select * from overall where rank <= {POPULAR_PER_SCOPE}
            union all
            select * from ranked where rank <= {POPULAR_PER_SCOPE}
            """
        )
        con.register("recommendations_df", recommendations)
        con.execute(
            """
            create table recommendations as
            select
                cast(visitor_id as bigint) as visitor_id,
                cast(item_id as bigint) as item_id,
                cast(rank as integer) as rank,
                cast(score as double) as score,
                cast(confidence as double) as confidence,
            from recommendations_df
            order by visitor_id, rank
            """
        )
        con.execute("create table ranker (name varchar, model blob, metadata json)")
        con.execute(
            "insert into ranker values ('catboost', ?, ?)",
            [ranker_file.read_bytes(), json.dumps(ranker_metadata, default=str)],
        )
        con.execute("create table metadata (key varchar primary key, value varchar)")
        con.executemany(
            "insert into metadata values (?, ?)",
            [(k, json.dumps(v, default=str)) for k, v in sorted(metadata.items())],
        )
        con.execute("detach wh")
        con.execute("checkpoint")
        counts = {}
        for (table,) in con.execute("select table_name from duckdb_tables()").fetchall():
            row = con.execute(f"select count(*) from {table}").fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts
