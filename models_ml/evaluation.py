"""Offline evaluation on the test window: the plain baselines (popularity, with and without the
items a visitor already met, and ALS without them), ALS and ALS + CatBoost, side by side.

Relevant items of a visitor are the items they viewed, carted or bought in the test window
`(t2, end]`, seen before or not. Models are compared on the same visitors: those who have an
event in the test window and ALS candidates as of `t2` (visitors ALS knows). The session method
(similar items of the session's last item) is scored on next-item prediction in test-window
sessions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from models_ml.metrics import evaluate_per_visitor
from recsys.candidate_sources import SOURCES

KS = (10, 20)


# One definition of "popular" for the evaluation's baseline and the snapshot's popular lists
# (what the API's fallback serves, models_ml/snapshot.py): items with an event that are not
# known to be unavailable (an item without an availability property counts as available, as
# it does everywhere the API recommends), by events of the last 7 days, then the decayed
# popularity score. On a shop without availability properties, "known available only" left
# this list empty and the popularity baseline at 0.
POPULAR_WHERE = "coalesce(is_available, true) and n_events_all > 0"
POPULAR_ORDER = "n_events_7d desc, popularity_score desc, item_id"


def popular_items(con: duckdb.DuckDBPyConnection, k: int = 100) -> list[int]:
    """The `k` most popular items as of the build's cutoff (POPULAR_WHERE, POPULAR_ORDER)."""
    rows = con.execute(
        f"select item_id from item_features where {POPULAR_WHERE} order by {POPULAR_ORDER} limit ?",
        [k],
    ).fetchall()
    return [int(r[0]) for r in rows]


def seen_items(con: duckdb.DuckDBPyConnection, visitor_ids: Sequence[int]) -> dict[int, set[int]]:
    """The items each of these visitors interacted with as of the build's cutoff."""
    with con.cursor() as cur:  # its own registrations, whatever `con` has open
        cur.register("wanted_visitors", pd.DataFrame({"visitor_id": list(visitor_ids)}))
        frame = cur.execute(
            """
            select visitor_id, item_id from interactions
            where visitor_id in (select visitor_id from wanted_visitors)
            """
        ).df()
    seen: dict[int, set[int]] = {}
    for visitor, item in zip(frame["visitor_id"].tolist(), frame["item_id"].tolist(), strict=True):
        seen.setdefault(int(visitor), set()).add(int(item))
    return seen


def truth_from_labels(con: duckdb.DuckDBPyConnection) -> dict[int, set[int]]:
    """Items each visitor interacted with in the label window (ranking_labels)."""
    frame = con.execute("select visitor_id, item_id from ranking_labels").df()
    truth: dict[int, set[int]] = {}
    for visitor, item in zip(frame["visitor_id"].tolist(), frame["item_id"].tolist(), strict=True):
        truth.setdefault(int(visitor), set()).add(int(item))
    return truth


def ranked_lists(
    frame: pd.DataFrame, score: np.ndarray, depth: int | None = None
) -> dict[int, list[int]]:
    """Each visitor's candidates ordered by `score`, best first (ties by ALS rank), cut to the
    first `depth` items when given (metrics at k never look further than k)."""
    visitors = frame["visitor_id"].to_numpy()
    order = np.lexsort((frame["als_rank"].to_numpy(), -np.asarray(score, dtype=float), visitors))
    visitors, items = visitors[order], frame["item_id"].to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, visitors[1:] != visitors[:-1]])
    ends = np.r_[starts[1:], len(visitors)]
    if depth is not None:
        ends = np.minimum(ends, starts + depth)
    return {
        int(visitors[lo]): items[lo:hi].tolist()
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True)
    }


def compare_models(
    frame: pd.DataFrame,
    ranker_scores: np.ndarray,
    popularity: Sequence[int],
    truth: Mapping[int, set[int]],
    catalogue_size: int,
    seen: Mapping[int, set[int]] | None = None,
) -> tuple[dict[str, dict[str, float]], int, dict[str, dict[str, np.ndarray]]]:
    """Metrics of every model on the visitors with candidates and truth, and each metric per
    visitor (aligned across models, for paired intervals).

    - `popularity`: the popular list, the same for everyone;
    - `popularity_unseen`: the popular list without the items the visitor already met (`seen`);
    - `als_unseen`: ALS's best unmet items (plain ALS that filters what the visitor has);
    - `als`: ALS's order of its own candidates, met items included;
    - `als_catboost`: the ranker's order of the pool.
    """
    seen = seen or {}
    known = set(map(int, frame["visitor_id"].unique()))
    eval_truth = {v: items for v, items in truth.items() if v in known and items}
    depth = max(KS)
    als_rank = -frame["als_rank"].to_numpy(dtype=float)
    source = frame["candidate_source"].to_numpy(dtype=object)
    unmet = source == "als"
    from_als = unmet | (source == "revisit")
    lists = {
        "popularity": {v: list(popularity[:depth]) for v in eval_truth},
        "popularity_unseen": {
            v: [i for i in popularity if i not in seen.get(v, ())][:depth] for v in eval_truth
        },
        "als_unseen": ranked_lists(frame[unmet], als_rank[unmet], depth),
        "als": ranked_lists(frame[from_als], als_rank[from_als], depth),
        "als_catboost": ranked_lists(frame, ranker_scores, depth),
    }
    models: dict[str, dict[str, float]] = {}
    per_visitor: dict[str, dict[str, np.ndarray]] = {}
    for name, recommended in lists.items():
        models[name], per_visitor[name] = evaluate_per_visitor(
            recommended, eval_truth, KS, catalogue_size
        )
    return models, len(eval_truth), per_visitor


def pool_recall(
    frame: pd.DataFrame, truth: Mapping[int, set[int]], seen: Mapping[int, set[int]]
) -> dict[str, Any]:
    """What the candidate pool can reach on the evaluated visitors (those with candidates and
    relevant items): the mean share of a visitor's relevant items in the pool (recall), overall
    and by the source that offered the item (`candidate_source`), the pool's mean size overall
    and by source, and the shop's re-visit rate (the share of relevant items the visitor had
    met before the cutoff)."""
    known = set(map(int, frame["visitor_id"].unique()))
    pairs = [(v, i) for v, items in truth.items() if v in known for i in items]
    if not pairs:
        return {"n_visitors": 0}
    relevant = pd.DataFrame(pairs, columns=["visitor_id", "item_id"])
    pool = frame[["visitor_id", "item_id", "candidate_source"]].drop_duplicates(
        ["visitor_id", "item_id"]
    )
    found = relevant.merge(pool, on=["visitor_id", "item_id"], how="left")
    found["in_pool"] = found["candidate_source"].notna()
    for name in SOURCES:
        found[name] = found["candidate_source"] == name
    found["had_met"] = [i in seen.get(v, ()) for v, i in pairs]
    per_visitor = found.groupby("visitor_id")[["in_pool", *SOURCES]].mean()
    n_visitors = frame["visitor_id"].nunique()
    by_source = frame["candidate_source"].value_counts().reindex(SOURCES, fill_value=0)
    return {
        "n_visitors": len(per_visitor),
        "mean_pool_size": float(len(frame) / n_visitors),
        "mean_pool_size_by_source": {
            name: float(count / n_visitors) for name, count in by_source.items()
        },
        "recall": float(per_visitor["in_pool"].mean()),
        "recall_by_source": {name: float(per_visitor[name].mean()) for name in SOURCES},
        "revisit_rate": float(found["had_met"].mean()),
    }


def _session_steps(gap_minutes: int) -> str:
    """CTEs ending in `steps` (previous_item_id, next_item_id): consecutive views of the
    test window's sessions, cut at `gap_minutes` of inactivity. Parameters: start, end."""
    return f"""
        with views as (
            select visitor_id, item_id, event_at
            from stg_retailrocket__events
            where event_type = 'view' and event_at > ? and event_at <= ?
        ),
        flagged as (
            select *,
                case
                    when lag(event_at) over by_visitor is null
                        or event_at - lag(event_at) over by_visitor
                            > interval {int(gap_minutes)} minute
                    then 1 else 0
                end as is_new_session,
            from views
            window by_visitor as (partition by visitor_id order by event_at, item_id)
        ),
        sessions as (
            select *,
                sum(is_new_session) over (
                    partition by visitor_id order by event_at, item_id
                    rows between unbounded preceding and current row
                ) as session_number,
            from flagged
        ),
        steps as (
            select
                lag(item_id) over by_session as previous_item_id,
                item_id as next_item_id,
            from sessions
            window by_session as (
                partition by visitor_id, session_number order by event_at, item_id
            )
        )
    """


def session_query_items(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, gap_minutes: int = 30
) -> np.ndarray:
    """The items the session method is asked about in (start, end]: only they need similar
    items for the evaluation."""
    rows = con.execute(
        f"""
        {_session_steps(gap_minutes)}
        select distinct previous_item_id as item_id from steps
        where previous_item_id is not null and previous_item_id <> next_item_id
        """,
        [start, end],
    ).fetchnumpy()
    return np.asarray(rows["item_id"], dtype=np.int64)


def session_next_item(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    k: int = 20,
    gap_minutes: int = 30,
) -> dict[str, Any]:
    """HR@k and MRR@k of "similar items of the last item" for the next item in a session.

    Sessions are the test window's views cut at `gap_minutes` of inactivity; each step from one
    item to a different next item is a prediction. Similar items come from ml.als_similar_items
    (fitted as of `start`). Steps whose last item ALS does not know count as misses.
    """
    row = con.execute(
        f"""
        {_session_steps(gap_minutes)},
        predictions as (
            select
                steps.previous_item_id,
                steps.next_item_id,
                similar_items.similarity_rank,
            from steps
            left join ml.als_similar_items as similar_items
                on steps.previous_item_id = similar_items.item_id
                and steps.next_item_id = similar_items.similar_item_id
                and similar_items.similarity_rank <= {int(k)}
            where steps.previous_item_id is not null
                and steps.previous_item_id <> steps.next_item_id
        )
        select
            count(*) as n_steps,
            count(similarity_rank) as n_hits,
            coalesce(sum(1.0 / similarity_rank), 0) as reciprocal_ranks,
        from predictions
        """,
        [start, end],
    ).fetchone()
    n_steps, n_hits, rr = (int(row[0]), int(row[1]), float(row[2])) if row else (0, 0, 0.0)
    return {
        "method": "similar items (ALS item factors) of the session's last viewed item",
        "n_steps": n_steps,
        f"hit_rate@{k}": n_hits / n_steps if n_steps else 0.0,
        f"mrr@{k}": rr / n_steps if n_steps else 0.0,
    }
