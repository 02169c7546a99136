"""Offline evaluation on the test window: the plain baselines (popularity, with and without the
items a visitor already met, and ALS without them), ALS and ALS + CatBoost, side by side.

Relevant items of a visitor are the items they viewed, carted or bought in the test window
`(t2, end]`, seen before or not. Models are compared on the same visitors: those who have an
event in the test window and ALS candidates as of `t2` (visitors ALS knows). The session method
(similar items of the session's last item) is scored on next-item prediction in test-window
sessions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from models_ml.metrics import evaluate_matrix
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
    """Items each visitor interacted with in the label window (ranking_labels), by visitor id.

    In a set order: the evaluation's per-visitor figures follow it, and a bootstrap resample
    draws visitors by position, so an order that varied from run to run (DuckDB sets none)
    moved the intervals, and the means in their last digit, with the same seed."""
    frame = con.execute(
        "select visitor_id, item_id from ranking_labels order by visitor_id, item_id"
    ).df()
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
    visitor (aligned across models, for paired intervals; in `truth`'s order).

    - `popularity`: the popular list, the same for everyone;
    - `popularity_unseen`: the popular list without the items the visitor already met (`seen`);
    - `als_unseen`: ALS's best unmet items (plain ALS that filters what the visitor has);
    - `als`: ALS's order of its own candidates, met items included;
    - `als_catboost`: the ranker's order of the pool.

    Every list is laid out as a visitors x ranks matrix with array operations (a full-scale
    evaluation has ~65,000 visitors and ~6M candidates: 9 s per visitor in Python, 2 s so);
    `ranked_lists` and `metrics.evaluate_per_visitor` are the per-visitor definition it
    agrees with (tested).
    """
    seen = seen or {}
    depth = max(KS)
    frame_visitors = frame["visitor_id"].to_numpy(np.int64)
    eval_visitors = np.fromiter((v for v, items in truth.items() if items), dtype=np.int64)
    eval_visitors = eval_visitors[np.isin(eval_visitors, pd.unique(frame_visitors))]
    n = len(eval_visitors)
    rows = pd.Index(eval_visitors)
    relevant_rows, relevant_items = _flatten(truth, eval_visitors)
    n_relevant = np.bincount(relevant_rows, minlength=n)

    source = frame["candidate_source"]
    unmet = source.isin(["als"]).to_numpy()
    from_als = unmet | source.isin(["revisit"]).to_numpy()
    items = frame["item_id"].to_numpy(np.int64)
    als_rank = frame["als_rank"].to_numpy(dtype=float)
    frame_rows = rows.get_indexer(pd.Index(frame_visitors))
    popular = np.asarray(popularity, dtype=np.int64)
    layouts = {
        "popularity": _popular_matrix(popular, n, depth, None),
        "popularity_unseen": _popular_matrix(popular, n, depth, _flatten(seen, eval_visitors)),
        "als_unseen": _ranked_matrix(
            frame_rows[unmet], items[unmet], None, als_rank[unmet], n, depth
        ),
        "als": _ranked_matrix(
            frame_rows[from_als], items[from_als], None, als_rank[from_als], n, depth
        ),
        "als_catboost": _ranked_matrix(
            frame_rows, items, np.asarray(ranker_scores, dtype=float), als_rank, n, depth
        ),
    }
    # a shown item is a hit when (row, item) is one of the relevant pairs
    relevant_codes = pd.Index(np.unique(relevant_items))
    width = np.int64(max(len(relevant_codes), 1))
    relevant_keys = np.unique(relevant_rows * width + relevant_codes.get_indexer(relevant_items))
    models: dict[str, dict[str, float]] = {}
    per_visitor: dict[str, dict[str, np.ndarray]] = {}
    for name, (shown, filled) in layouts.items():
        code = relevant_codes.get_indexer(shown.ravel()).reshape(shown.shape)
        keys = np.arange(n, dtype=np.int64)[:, None] * width + code
        hits = filled & (code >= 0) & np.isin(keys, relevant_keys)
        models[name], per_visitor[name] = evaluate_matrix(
            shown, filled, hits, n_relevant, KS, catalogue_size
        )
    return models, n, per_visitor


def _flatten(sets: Mapping[int, set[int]], visitors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in `visitors`, item) of each item of each visitor's set."""
    groups = [sets.get(int(v), ()) for v in visitors]
    counts = np.fromiter((len(g) for g in groups), dtype=np.int64, count=len(groups))
    items = np.fromiter(
        (item for group in groups for item in group), dtype=np.int64, count=int(counts.sum())
    )
    return np.repeat(np.arange(len(visitors), dtype=np.int64), counts), items


def _ranked_matrix(
    rows: np.ndarray,
    items: np.ndarray,
    score: np.ndarray | None,
    als_rank: np.ndarray,
    n: int,
    depth: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(shown, filled), n x depth: each row's items by `score`, best first, ties by ALS rank
    (`ranked_lists`' order; no score: by ALS rank); `rows` are the candidates' rows (-1: not
    evaluated)."""
    shown = np.zeros((n, depth), dtype=np.int64)
    filled = np.zeros((n, depth), dtype=bool)
    keep = rows >= 0
    rows, items, als_rank = rows[keep], items[keep], als_rank[keep]
    order = _order(rows, None if score is None else score[keep], als_rank)
    rows, items = rows[order], items[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else rows[:0]
    nth = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    top = nth < depth
    shown[rows[top], nth[top]] = items[top]
    filled[rows[top], nth[top]] = True
    return shown, filled


def _order(rows: np.ndarray, score: np.ndarray | None, als_rank: np.ndarray) -> np.ndarray:
    """np.lexsort((als_rank, -score, rows)): by row, best score first, ties by ALS rank, then
    input order (no score: by row and ALS rank); as one stable sort of an integer key where it
    fits (~4x faster on millions of candidates)."""
    if not len(rows):
        return np.zeros(0, dtype=np.int64)
    if _in_rank_order(rows, als_rank):
        # candidates as `steps.scored_candidates` gives them, by visitor and ALS rank: already
        # in order without a score, and a stable sort within each row by score keeps ties in
        # ALS rank order (full scale: ~3x faster than the global sorts below)
        if score is None:
            return np.arange(len(rows))
        return order_within_groups(rows, -np.asarray(score, dtype=np.float64))
    score_rank = np.zeros(len(rows), dtype=np.int64)
    if score is not None:
        by_score = np.argsort(-score, kind="stable")
        ordered = -score[by_score]
        score_rank[by_score] = np.cumsum(np.r_[0, ordered[1:] != ordered[:-1]])
    exact = (
        bool(np.all(np.isfinite(als_rank)))
        and np.array_equal(als_rank, np.round(als_rank))
        and (score is None or bool(np.all(np.isfinite(score))))
    )
    key = packed_key(rows, score_rank, als_rank) if exact else None
    if key is None:
        return np.lexsort((als_rank, -score if score is not None else 0 * als_rank, rows))
    return np.argsort(key, kind="stable")


def _in_rank_order(rows: np.ndarray, als_rank: np.ndarray) -> bool:
    """Whether rows are in row order and, within a row, in ALS rank order (missing last)."""
    if np.any(rows[1:] < rows[:-1]):
        return False
    ranks = np.where(np.isnan(als_rank), np.inf, als_rank)
    return not np.any((rows[1:] == rows[:-1]) & (ranks[1:] < ranks[:-1]))


def packed_key(*columns: np.ndarray) -> np.ndarray | None:
    """One int64 per row that sorts and compares as the rows of the integer `columns` do
    (first column first): each column less its least value, in mixed radix. None when the
    columns' ranges do not fit in 62 bits together (callers then sort on the columns)."""
    values = [np.asarray(c, dtype=np.int64) for c in columns]
    if not len(values[0]):
        return np.zeros(0, dtype=np.int64)
    lows = [int(v.min()) for v in values]
    widths = [int(v.max()) - low + 1 for v, low in zip(values, lows, strict=True)]
    if math.prod(widths) >= 2**62:
        return None
    key = values[0] - lows[0]
    for v, low, width in zip(values[1:], lows[1:], widths[1:], strict=True):
        key = key * width + (v - low)
    return key


def order_within_groups(
    groups: np.ndarray, key: np.ndarray, groups_per_chunk: int = 20_000
) -> np.ndarray:
    """np.lexsort((key, groups)): rows by group, then by `key` ascending, ties in input order.

    Groups hold a few dozen rows each, so rather than one sort of millions of rows on two keys,
    each chunk of groups is laid out as a groups x longest-group matrix (padded with +inf) and
    every row of it sorted on its own (full scale, 12.5M candidates of 140k visitors: pandas'
    two-key stable sort 5-8 s, this ~0.5 s). Input already in group order is not sorted again.
    """
    groups = np.asarray(groups)
    key = np.asarray(key, dtype=np.float64)
    n = len(groups)
    if not n:
        return np.zeros(0, dtype=np.int64)
    if not np.all(np.isfinite(key)):  # the padding must sort after every real key
        return np.lexsort((key, groups))
    by_group = None
    if np.any(groups[1:] < groups[:-1]):
        by_group = np.argsort(groups, kind="stable")
        groups, key = groups[by_group], key[by_group]
    bounds = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1, n]
    sizes = np.diff(bounds)
    parts = []
    for lo in range(0, len(sizes), groups_per_chunk):
        hi = min(lo + groups_per_chunk, len(sizes))
        chunk_sizes, starts = sizes[lo:hi], bounds[lo:hi]
        width = int(chunk_sizes.max())
        first, last = int(bounds[lo]), int(bounds[hi])
        row = np.repeat(np.arange(hi - lo), chunk_sizes)
        col = np.arange(last - first) - np.repeat(starts - first, chunk_sizes)
        padded = np.full((hi - lo, width), np.inf)
        padded[row, col] = key[first:last]
        within = np.argsort(padded, axis=1, kind="stable")
        parts.append((starts[:, None] + within)[np.arange(width) < chunk_sizes[:, None]])
    order = np.concatenate(parts)
    return order if by_group is None else by_group[order]


def _popular_matrix(
    popular: np.ndarray, n: int, depth: int, hidden: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(shown, filled), n x depth: the popular list for every row, without each row's
    `hidden` items (row, item) when given."""
    shown = np.zeros((n, depth), dtype=np.int64)
    filled = np.zeros((n, depth), dtype=bool)
    if hidden is None or not len(popular) or not n:
        width = min(depth, len(popular))
        shown[:, :width] = popular[:width]
        filled[:, :width] = True
        return shown, filled
    hidden_rows, hidden_items = hidden
    position = pd.Index(popular).get_indexer(hidden_items)
    on_list = position >= 0
    hidden_rows, position = hidden_rows[on_list], position[on_list]
    # a row needs at most depth + (its hidden items on the list) positions of the list
    most_hidden = int(np.bincount(hidden_rows, minlength=n).max())
    width = min(len(popular), depth + most_hidden)
    masked = np.zeros((n, width), dtype=bool)
    near = position < width
    masked[hidden_rows[near], position[near]] = True
    # the first `depth` unmasked positions of each row, in list order
    first = np.argsort(masked, axis=1, kind="stable")[:, :depth]
    visible = ~np.take_along_axis(masked, first, axis=1)
    cols = first.shape[1]
    shown[:, :cols] = np.where(visible, popular[first], 0)
    filled[:, :cols] = visible
    return shown, filled


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
    pool = frame[["visitor_id", "item_id", "candidate_source"]]
    # only the candidates that are relevant pairs matter: keep those before the pandas work
    # (full scale: 5.8M candidates, ~150k relevant pairs)
    pool = pool[_pair_in(pool, relevant)]
    pool = pool.drop_duplicates(["visitor_id", "item_id"])
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


def _pair_in(frame: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    """Whether each (visitor_id, item_id) of `frame` is one of `pairs`, by one integer key per
    pair where the ids allow it."""
    visitors, items = (frame[c].to_numpy(np.int64) for c in ("visitor_id", "item_id"))
    wanted_v, wanted_i = (pairs[c].to_numpy(np.int64) for c in ("visitor_id", "item_id"))
    if not len(visitors) or not len(wanted_v):
        return np.zeros(len(visitors), dtype=bool)
    key = packed_key(np.r_[visitors, wanted_v], np.r_[items, wanted_i])  # one radix for both
    if key is None:
        keys = pd.MultiIndex.from_arrays([visitors, items])
        return np.asarray(keys.isin(pd.MultiIndex.from_arrays([wanted_v, wanted_i])))
    return pd.Series(key[: len(visitors)]).isin(key[len(visitors) :]).to_numpy()


def session_query_items(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """The items the session method is asked about in the label window (the dbt model
    label_window_session_steps): only they need similar items for the evaluation."""
    rows = con.execute(
        "select distinct previous_item_id as item_id from label_window_session_steps"
    ).fetchnumpy()
    return np.asarray(rows["item_id"], dtype=np.int64)


def session_next_item(con: duckdb.DuckDBPyConnection, k: int = 20) -> dict[str, Any]:
    """HR@k and MRR@k of "similar items of the last item" for the next item in a session.

    The steps are the dbt model label_window_session_steps: each view, in a session of the label
    window (sessions cut as the features' history is), of another item than the one viewed
    before. Similar items come from stg_ml__als_similar_items (fitted as of the cutoff). Steps
    whose last item ALS does not know count as misses.
    """
    rows = con.execute(
        f"""
        with predictions as (
            select
                steps.previous_item_id,
                steps.next_item_id,
                similar_items.similarity_rank,
            from label_window_session_steps as steps
            left join staging.stg_ml__als_similar_items as similar_items
                on steps.previous_item_id = similar_items.item_id
                and steps.next_item_id = similar_items.similar_item_id
                and similar_items.similarity_rank <= {int(k)}
        )
        select similarity_rank, count(*) as n_steps,
        from predictions
        group by similarity_rank
        """
    ).fetchall()
    # the reciprocal ranks added up here, exactly (math.fsum), rather than by DuckDB's threads
    # in whatever order they finish: the same figure at every run
    n_steps = sum(int(n) for _, n in rows)
    n_hits = sum(int(n) for rank, n in rows if rank is not None)
    rr = math.fsum(int(n) / rank for rank, n in rows if rank is not None)
    return {
        "method": "similar items (ALS item factors) of the session's last viewed item",
        "n_steps": n_steps,
        f"hit_rate@{k}": n_hits / n_steps if n_steps else 0.0,
        f"mrr@{k}": rr / n_steps if n_steps else 0.0,
    }
