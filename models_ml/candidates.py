"""Candidates: implicit ALS on the `interactions` mart, written back to the warehouse.

Reads only dbt marts. Writes two tables in the warehouse's `ml` schema, which dbt declares as
sources (`source('ml', ...)`):

- `ml.als_candidates`: per visitor, the candidate pool (visitor_id, item_id, als_score,
  als_rank, is_seen, source): the top-N items ALS finds among those the visitor has not met
  (`als`) and up to `n_revisit` met ones (`revisit`), ranked by ALS score together, then the
  similar items of the visitor's latest items (`similar`) and popular items (`popular`), which
  have no ALS score, rank or `is_seen` here (`add_sources`; the rules in
  `recsys.candidate_sources`, which the API follows at request time). The ranker learns from
  the source and `is_seen` which matter on the shop;
- `ml.als_similar_items`: top-M similar items per item (item_id, similar_item_id, similarity,
  similarity_rank).

Visitors and items unknown to ALS get nothing here: the API and the evaluation fall back to
popularity and to the similar items of what the visitor looked at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from models_ml.evaluation import order_within_groups
from recsys.candidate_sources import SOURCES
from recsys.settings import SEED

SOURCE_DTYPE = pd.CategoricalDtype(list(SOURCES))

DEFAULT_ALS_PARAMS: dict[str, Any] = {
    "factors": 64,
    "regularization": 0.05,
    "iterations": 10,
    "alpha": 20.0,  # confidence = 1 + alpha * weight ("alpha" weighting)
    "weighting": "alpha",  # or "bm25"
    "bm25_k1": 100.0,
    "bm25_b": 0.8,
    # the pool of a visitor: the `n_candidates` best items ALS finds among those the visitor has
    # not met yet, plus up to `n_revisit` items they have met (their heaviest interactions),
    # all scored and ranked by ALS together. Where visitors come back to items (RetailRocket),
    # the met items are often the answer; where they never do, a top 100 that ALS fills with
    # met items (64% of it on such a shop) leaves the ranker few new items to choose from. With
    # both in the pool, whatever the shop, the ranker learns from `is_seen` which matter.
    # 50, not 100: with the similar and popular sources beside it, ALS's items 51-100 add
    # little (full scale, seed 7: pool recall 0.392 -> 0.381, ranker NDCG@10 0.2934 -> 0.2940)
    # while every later step (ranking features, scoring, the snapshot) grows with the pool
    # (142 -> 90 items a visitor; at publish ranking features 30 -> 22 s, scoring 43 -> 25 s,
    # the snapshot 26 -> 16 s; peak memory 5.9 -> 4.1 GB)
    "n_candidates": 50,
    "n_revisit": 50,
    "n_similar": 50,
    # visitors with fewer distinct items get no published candidates (one click says little;
    # the session method serves them), which also keeps scoring affordable at full scale
    "min_visitor_items": 2,
    # the factors are fitted on visitors with at least this many distinct items: a one-item
    # visitor says nothing about which items go together, and two thirds of RetailRocket's
    # visitors are one-item visitors (the fit is ~3x faster without them); every visitor's
    # factors are then solved against the fitted item factors when recommending (fold-in)
    "min_fit_items": 2,
    # candidates and similar items are drawn from items with at least this many fitted visitors.
    # Rarer items' factors are mostly regularisation: they almost never reach a visitor's top
    # 100 (full scale, test window: recall@100 0.1998 with every item, 0.1993 with 5+, on
    # 65,783 visitors), yet they crowd the cosine of similar items (session next-item HR@20
    # 0.053 with every item, 0.116 with 5+). The brute-force search costs pool size x queries,
    # so this also makes both searches ~3x faster (193k -> 63k items). 10 rather than 5 halves
    # the pool again (full scale, publish: 63k -> 30k available items) for the same recall
    # (training window, 20,000 visitors: ALS's 50 unmet items 0.0647 with 5+, 0.0639 with 10+;
    # candidates 5.1 -> 3.7 s, similar items 3.1 -> 1.4 s)
    "min_item_visitors": 10,
    # ... relaxed (10, 9, ... 1) until the pool has at least this many items: on small data
    # a strict threshold would leave almost nothing to recommend
    "min_pool_items": 1_000,
    # similar items are searched for items with at least this many fitted visitors: rarer
    # items' factors are too vague to compare (and the brute-force search grows with them)
    "min_query_item_visitors": 2,
    "batch_size": 20_000,
}


@dataclass
class AlsResult:
    """A fitted model with its id maps and what it was trained on."""

    model: Any
    visitor_ids: np.ndarray  # row index -> visitor_id
    item_ids: np.ndarray  # column index -> item_id
    user_items: sp.csr_matrix  # every visitor's confidences (the fit used some of the rows)
    item_visitors: np.ndarray  # column index -> number of fitted visitors of the item
    params: dict[str, Any]
    seed: int
    fit_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def confidence_matrix(
    interactions: pd.DataFrame, params: dict[str, Any]
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Visitor x item confidence from the mart's `weight`, as alpha scaling or BM25."""
    visitors, v_idx = np.unique(interactions["visitor_id"].to_numpy(), return_inverse=True)
    items, i_idx = np.unique(interactions["item_id"].to_numpy(), return_inverse=True)
    weight = interactions["weight"].to_numpy(dtype=np.float32)
    matrix = sp.csr_matrix((weight, (v_idx, i_idx)), shape=(len(visitors), len(items)))
    if params["weighting"] == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        matrix = bm25_weight(matrix, K1=params["bm25_k1"], B=params["bm25_b"]).tocsr()
    elif params["weighting"] == "alpha":
        matrix = matrix.multiply(params["alpha"]).tocsr()
    else:
        raise ValueError(f"unknown weighting {params['weighting']!r}: use 'alpha' or 'bm25'")
    # implicit adds the 1 of "1 + alpha * r" itself: it uses the values as confidence - 1
    # the COO -> CSR conversion leaves each row's items in item order, whatever the order of
    # the mart's rows (DuckDB sets none), so the solver sums them in one order: same factors
    return matrix.astype(np.float32), visitors, items


def fit(
    interactions: pd.DataFrame,
    params: dict[str, Any] | None = None,
    seed: int = SEED,
    show_progress: bool = True,
) -> AlsResult:
    """Fit ALS with a fixed seed on the interactions (visitor_id, item_id, weight)."""
    from implicit.cpu.als import AlternatingLeastSquares

    p = {**DEFAULT_ALS_PARAMS, **(params or {})}
    user_items, visitors, items = confidence_matrix(interactions, p)
    fit_rows = np.flatnonzero(np.diff(user_items.indptr) >= p["min_fit_items"])
    if not len(fit_rows):  # tiny data: fit on everyone rather than on no one
        fit_rows = np.arange(user_items.shape[0])
    fitted = user_items[fit_rows]
    t0 = time.perf_counter()
    # implicit runs its own threads: BLAS must use one (OPENBLAS_NUM_THREADS=1 at start-up
    # does the same; this holds even when numpy was imported first)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=p["factors"],
            regularization=p["regularization"],
            alpha=1.0,  # the weighting above already scaled the confidences
            iterations=p["iterations"],
            random_state=seed,
        )
        model.fit(fitted, show_progress=show_progress)
    return AlsResult(
        model=model,
        visitor_ids=visitors,
        item_ids=items,
        user_items=user_items,
        item_visitors=np.diff(fitted.tocsc().indptr),
        params=p,
        seed=seed,
        fit_seconds=time.perf_counter() - t0,
        info={
            "n_visitors": len(visitors),
            "n_fitted_visitors": len(fit_rows),
            "n_items": len(items),
            "nnz": user_items.nnz,
            "fitted_nnz": fitted.nnz,
        },
    )


def item_pool(result: AlsResult, pool_item_ids: np.ndarray | None = None) -> np.ndarray:
    """Column indices of the items that may be returned: those with `min_item_visitors`
    fitted visitors (relaxed until the pool has `min_pool_items`), within `pool_item_ids` when
    given."""
    allowed = np.ones(len(result.item_ids), dtype=bool)
    if pool_item_ids is not None:
        allowed = np.isin(result.item_ids, pool_item_ids)
    counts = np.where(allowed, result.item_visitors, 0)
    threshold = pool_threshold(counts, result.params)
    return np.flatnonzero(counts >= threshold)


def pool_threshold(item_visitors: np.ndarray, params: dict[str, Any]) -> int:
    """The strictest number of fitted visitors, from `min_item_visitors` down to 1, that still
    leaves `min_pool_items` items (or every item with a fitted visitor, when there are fewer)."""
    wanted = min(params["min_pool_items"], int(np.count_nonzero(item_visitors >= 1)))
    for threshold in range(max(int(params["min_item_visitors"]), 1), 1, -1):
        if np.count_nonzero(item_visitors >= threshold) >= wanted:
            return threshold
    return 1


def recommend(
    result: AlsResult,
    visitor_ids: np.ndarray | None = None,
    pool_item_ids: np.ndarray | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Candidates for the given known visitors (default: those with enough items): the top
    `n_candidates` unmet items and up to `n_revisit` met ones, ranked by ALS (see `_pool`).

    Each visitor's factors are solved from their items against the fitted item factors
    (implicit's `recalculate_user`): the same treatment for visitors left out of the fit and
    for the others, and always up to date with the interactions.
    """
    from tqdm import tqdm

    p = result.params
    if visitor_ids is None:
        per_row = np.diff(result.user_items.indptr)
        rows = np.flatnonzero(per_row >= p["min_visitor_items"])
    else:
        rows = np.flatnonzero(np.isin(result.visitor_ids, visitor_ids))
    pool = np.sort(item_pool(result, pool_item_ids))
    # met items may come back from outside the pool's popularity threshold, not from outside
    # `pool_item_ids` (published lists: available items only)
    allowed = None if pool_item_ids is None else np.isin(result.item_ids, pool_item_ids)
    n = min(p["n_candidates"], len(pool))
    if n == 0:
        rows = rows[:0]
    frames = []
    batches = range(0, len(rows), p["batch_size"])
    for lo in tqdm(
        batches, desc="als candidates", disable=None if show_progress else True, unit="batch"
    ):
        batch = rows[lo : lo + p["batch_size"]]
        frames.append(_pool(result, batch, pool, n, allowed))
    if not frames:
        return pd.DataFrame(
            {
                "visitor_id": pd.Series([], dtype="int64"),
                "item_id": pd.Series([], dtype="int64"),
                "als_score": pd.Series([], dtype="float64"),
                "als_rank": pd.Series([], dtype="int32"),
                "is_seen": pd.Series([], dtype="bool"),
                "source": pd.Categorical([], categories=SOURCES),
            }
        )
    return pd.concat(frames, ignore_index=True)


def _pool(
    result: AlsResult,
    rows: np.ndarray,
    pool: np.ndarray,
    n: int,
    allowed: np.ndarray | None,
) -> pd.DataFrame:
    """The candidates of a batch of visitors (matrix rows): the top `n` unmet items of `pool`
    (sorted column indices) and up to `n_revisit` met items, ranked together by ALS score."""
    model = result.model
    seen = result.user_items[rows]
    with threadpool_limits(1, "blas"):
        # each visitor's factors solved from their items against the fitted item factors
        user = np.asarray(model.recalculate_user(rows, seen), dtype=np.float32)
        # met items of the pool, as pool positions, are left out of the search
        in_pool = seen[:, pool].tocsr()
        in_pool.data[:] = 1
        unmet_row, unmet_pos, unmet_score = _top_unmet(
            np.ascontiguousarray(model.item_factors[pool]), user, n, in_pool
        )
    unmet_item = pool[unmet_pos]
    # met items: each visitor's heaviest `n_revisit` (the weights decay with age), scored alike
    met_row = np.repeat(np.arange(len(rows)), np.diff(seen.indptr))
    met_item, met_weight = seen.indices, seen.data
    keep = np.ones(len(met_item), dtype=bool) if allowed is None else allowed[met_item]
    met_row, met_item, met_weight = met_row[keep], met_item[keep], met_weight[keep]
    order = np.lexsort((met_item, -met_weight, met_row))
    met_row, met_item = met_row[order], met_item[order]
    starts = np.searchsorted(met_row, np.arange(len(rows)))
    nth = np.arange(len(met_row)) - starts[met_row]
    cap = nth < result.params["n_revisit"]
    met_row, met_item = met_row[cap], met_item[cap]
    met_score = np.einsum("ij,ij->i", user[met_row], model.item_factors[met_item])
    row = np.concatenate([unmet_row, met_row])
    item = np.concatenate([unmet_item, met_item])
    score = np.concatenate([unmet_score, met_score]).astype(np.float64)
    is_seen = np.concatenate([np.zeros(len(unmet_row), bool), np.ones(len(met_row), bool)])
    # np.lexsort((item, -score, row)), as two stable sorts within each visitor's few dozen
    # candidates (full scale, publish: 7 batches of ~1.1M candidates, ~3x faster)
    order = order_within_groups(row, item)
    order = order[order_within_groups(row[order], -score[order])]
    row, item, score, is_seen = row[order], item[order], score[order], is_seen[order]
    rank = np.arange(len(row)) - np.searchsorted(row, np.arange(len(rows)))[row] + 1
    return pd.DataFrame(
        {
            "visitor_id": result.visitor_ids[rows][row],
            "item_id": result.item_ids[item],
            "als_score": score,
            "als_rank": rank.astype(np.int32),
            "is_seen": is_seen,
            "source": pd.Categorical.from_codes(is_seen.astype(np.int8), dtype=SOURCE_DTYPE),
        }
    )


# visitors with at most this many met items in the pool are searched without a filter
UNFILTERED_MET_ITEMS = 32


def _top_unmet(
    items: np.ndarray, user: np.ndarray, n: int, met: sp.csr_matrix
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, item position, score) of each query's best `n` items that are not in its row of
    `met` (queries x items, nonzero = met), best first within a row (fewer when too few).

    implicit's topk takes such a filter, but slices it in Python per 100 queries: most visitors
    (99% at full scale) have at most UNFILTERED_MET_ITEMS met items in the pool, so they get
    their best n + UNFILTERED_MET_ITEMS items unfiltered and lose their met ones here (the
    search 2.97 -> 1.93 s per 20,000 visitors); the others keep the filtered search.
    """
    from implicit.cpu.topk import topk

    n_met = np.diff(met.indptr)
    light = np.flatnonzero(n_met <= UNFILTERED_MET_ITEMS)
    heavy = np.flatnonzero(n_met > UNFILTERED_MET_ITEMS)
    parts = []
    if len(light):
        k = min(n + UNFILTERED_MET_ITEMS, items.shape[0])
        ids, scores = topk(items, user[light], k, num_threads=0)
        sub = met[light]
        width = np.int64(items.shape[0])
        met_keys = np.repeat(np.arange(len(light), dtype=np.int64), np.diff(sub.indptr))
        met_keys = met_keys * width + sub.indices
        keys = np.arange(len(light), dtype=np.int64)[:, None] * width + ids
        unmet = ~np.isin(keys, met_keys) & np.isfinite(scores)
        keep = unmet & (np.cumsum(unmet, axis=1) <= n)
        at, _ = np.nonzero(keep)
        parts.append((light[at], ids[keep], scores[keep]))
    if len(heavy):
        ids, scores = topk(items, user[heavy], n, filter_query_items=met[heavy], num_threads=0)
        # fewer unmet items than n: implicit pads with -FLT_MAX (finite) and met items
        found = scores > -np.finfo(scores.dtype).max
        at, _ = np.nonzero(found)
        parts.append((heavy[at], ids[found], scores[found]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (
        np.concatenate([p[0] for p in parts]).astype(np.int64),
        np.concatenate([p[1] for p in parts]).astype(np.int64),
        np.concatenate([p[2] for p in parts]),
    )


def add_sources(
    recs: pd.DataFrame,
    seeds: pd.DataFrame,
    similar: pd.DataFrame,
    popular: np.ndarray,
    batch_visitors: int = 50_000,
) -> pd.DataFrame:
    """`recs` (ALS's pool, from `recommend`) with each visitor's `similar` and `popular`
    candidates added, as `recsys.candidate_sources` defines them and the API computes them.

    `seeds`: (visitor_id, item_id) of each visitor's latest items, most recent first (at least
    the first SIMILAR_SEEDS of each); `similar`: `similar_items` rows of those items; `popular`:
    the popular list, best first. The added rows have no ALS score, rank or `is_seen` (the
    warehouse fills in `is_seen` from the interactions). Summed similarities are added up in the
    API's order and precision (float32 values, float64 sums, seed after seed), so that both
    sides cut the list at the same item. `source` is categorical (SOURCES).
    """
    from recsys.candidate_sources import (
        POPULAR_CANDIDATES,
        SIMILAR_CANDIDATES,
        SIMILAR_PER_SEED,
        SIMILAR_SEEDS,
    )

    # each item's first SIMILAR_PER_SEED similar items, in similarity order, as item codes
    sim = similar[similar["similarity_rank"] <= SIMILAR_PER_SEED]
    sim = sim.sort_values(["item_id", "similarity_rank"], kind="stable")
    sim_keys = sim["item_id"].to_numpy(np.int64)
    codes, sim_codes = np.unique(sim["similar_item_id"].to_numpy(np.int64), return_inverse=True)
    sim_values = sim["similarity"].to_numpy(np.float32).astype(np.float64)
    # each visitor's first SIMILAR_SEEDS seeds, in the given order
    seed_visitors = seeds["visitor_id"].to_numpy(np.int64)
    seed_items = seeds["item_id"].to_numpy(np.int64)
    if np.any(np.diff(seed_visitors) < 0):
        order = np.argsort(seed_visitors, kind="stable")
        seed_visitors, seed_items = seed_visitors[order], seed_items[order]
    first = np.arange(len(seed_visitors)) - np.searchsorted(seed_visitors, seed_visitors)
    seed_visitors, seed_items = (
        seed_visitors[first < SIMILAR_SEEDS],
        seed_items[first < SIMILAR_SEEDS],
    )
    rec_visitors = recs["visitor_id"].to_numpy(np.int64)
    rec_items = recs["item_id"].to_numpy(np.int64)
    if np.any(np.diff(rec_visitors) < 0):  # `recommend` gives them in visitor order
        order = np.argsort(rec_visitors, kind="stable")
        rec_visitors, rec_items = rec_visitors[order], rec_items[order]
    visitors = np.unique(rec_visitors)
    popular = np.asarray(popular, dtype=np.int64)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for lo in range(0, len(visitors), batch_visitors):
        batch = visitors[lo : lo + batch_visitors]
        r0, r1 = np.searchsorted(rec_visitors, [batch[0], batch[-1] + 1])
        s0, s1 = np.searchsorted(seed_visitors, [batch[0], batch[-1] + 1])
        parts.append(
            _similar_and_popular(
                batch,
                (rec_visitors[r0:r1], rec_items[r0:r1]),
                (seed_visitors[s0:s1], seed_items[s0:s1]),
                (sim_keys, codes, sim_codes, sim_values),
                popular,
                SIMILAR_CANDIDATES,
                POPULAR_CANDIDATES,
            )
        )
    n_recs = len(recs)
    added_visitors = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    added_items = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    added_codes = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int8)
    n_added = len(added_items)
    missing = np.concatenate([np.zeros(n_recs, dtype=bool), np.ones(n_added, dtype=bool)])
    rec_codes = np.asarray(pd.Categorical(recs["source"], categories=SOURCES).codes, np.int8)
    return pd.DataFrame(
        {
            "visitor_id": np.concatenate([recs["visitor_id"].to_numpy(np.int64), added_visitors]),
            "item_id": np.concatenate([recs["item_id"].to_numpy(np.int64), added_items]),
            "als_score": np.concatenate(
                [recs["als_score"].to_numpy(np.float64), np.full(n_added, np.nan)]
            ),
            "als_rank": pd.arrays.IntegerArray(
                np.concatenate(
                    [recs["als_rank"].to_numpy(np.int32), np.zeros(n_added, dtype=np.int32)]
                ),
                missing,
            ),
            "is_seen": pd.arrays.BooleanArray(
                np.concatenate([recs["is_seen"].to_numpy(bool), np.zeros(n_added, dtype=bool)]),
                missing,
            ),
            "source": pd.Categorical.from_codes(
                np.concatenate([rec_codes, added_codes]), dtype=SOURCE_DTYPE
            ),
        }
    )


def _similar_and_popular(
    visitors: np.ndarray,
    recs: tuple[np.ndarray, np.ndarray],
    seeds: tuple[np.ndarray, np.ndarray],
    sim: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    popular: np.ndarray,
    n_similar: int,
    n_popular: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(visitor ids, item ids, source codes) of the `similar` and `popular` candidates of a
    batch of visitors (sorted ids); `recs` and `seeds` are theirs, sorted by visitor."""
    rec_visitors, rec_items = recs
    seed_visitors, seed_items = seeds
    sim_keys, codes, sim_codes, sim_values = sim
    n_codes = max(len(codes), 1)
    # every seed's similar items, seed after seed, each in similarity order
    lo = np.searchsorted(sim_keys, seed_items, side="left")
    counts = np.searchsorted(sim_keys, seed_items, side="right") - lo
    idx = np.arange(int(counts.sum())) + np.repeat(lo - (np.cumsum(counts) - counts), counts)
    row = np.repeat(_rows_of(visitors, seed_visitors), counts)
    # summed per (visitor, item) in that order (np.bincount adds up in input order)
    pair, inverse = np.unique(row * n_codes + sim_codes[idx], return_inverse=True)
    total = np.bincount(inverse, weights=sim_values[idx], minlength=len(pair))
    # not the items ALS offered the visitor (hash lookups: sorted searches of millions of
    # random keys cost seconds in cache misses)
    rec_row = _rows_of(visitors, rec_visitors)
    at = pd.Index(codes).get_indexer(rec_items)
    offered = rec_row[at >= 0] * n_codes + at[at >= 0]
    keep = pd.Index(pair).get_indexer(offered)
    mask = np.ones(len(pair), dtype=bool)
    mask[keep[keep >= 0]] = False
    pair, total = pair[mask], total[mask]
    pair_row = pair // n_codes
    pair_item = codes[pair % n_codes] if len(codes) else pair
    # best total first within a visitor, ties by item: `pair` is in (visitor, item) order, so
    # a stable sort by total within each visitor's pairs does it
    order = order_within_groups(pair_row, -total)
    pair_row, pair_item = pair_row[order], pair_item[order]
    nth = np.arange(len(pair_row)) - np.searchsorted(pair_row, pair_row)
    sim_row, sim_item = pair_row[nth < n_similar], pair_item[nth < n_similar]
    # the popular list, without what the visitor was offered already
    taken = np.zeros((len(visitors), len(popular)), dtype=bool)
    if len(popular):
        position = pd.Index(popular)
        for rows, items in ((rec_row, rec_items), (sim_row, sim_item)):
            at = position.get_indexer(items)
            taken[rows[at >= 0], at[at >= 0]] = True
    free = ~taken
    pop_row, pop_pos = np.nonzero(free & (np.cumsum(free, axis=1) <= n_popular))
    return (
        visitors[np.concatenate([sim_row, pop_row])],
        np.concatenate([sim_item, popular[pop_pos]]),
        np.concatenate(
            [np.full(len(sim_row), 2, dtype=np.int8), np.full(len(pop_row), 3, dtype=np.int8)]
        ),
    )


def _rows_of(visitors: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """The position in `visitors` (sorted, unique) of each of `sorted_ids` (sorted, each one of
    `visitors`), from run lengths rather than one search per id."""
    bounds = np.searchsorted(sorted_ids, visitors, side="right")
    return np.repeat(np.arange(len(visitors)), np.diff(bounds, prepend=0))


def similar_items(
    result: AlsResult,
    query_item_ids: np.ndarray | None = None,
    pool_item_ids: np.ndarray | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Top-M most similar items (cosine on the item factors) of the query items, self excluded.

    Queries are `query_item_ids` (default: every item) that have `min_query_item_visitors`
    fitted visitors; answers come from `item_pool` (narrowed to `pool_item_ids` when given, for
    example available items only). The search is brute force, so its cost is queries x pool:
    ask only for what will be used.
    """
    from tqdm import tqdm

    empty = pd.DataFrame(
        {
            "item_id": pd.Series([], dtype="int64"),
            "similar_item_id": pd.Series([], dtype="int64"),
            "similarity": pd.Series([], dtype="float64"),
            "similarity_rank": pd.Series([], dtype="int32"),
        }
    )
    pool = item_pool(result, pool_item_ids)
    # items with fewer fitted visitors have factors too vague to compare (the session method
    # falls back to popular items for them)
    queries = result.item_visitors >= result.params["min_query_item_visitors"]
    if query_item_ids is not None:
        queries &= np.isin(result.item_ids, query_item_ids)
    queries = np.flatnonzero(queries)
    m = min(result.params["n_similar"], len(pool) - 1)
    if m <= 0 or not len(queries):
        return empty
    from implicit.cpu.topk import topk

    # cosine as the dot product of unit vectors, normalised once: implicit's similar_items
    # divides every batch's query x pool scores by the pool's norms, a pass over all of them
    # (full scale, publish: 27.5 -> 17.3 s; the same neighbours but for float rounding ties)
    factors = np.asarray(result.model.item_factors, dtype=np.float32)
    norms = np.linalg.norm(factors, axis=1)
    norms[norms == 0] = 1.0  # a zero vector stays zero: similarity 0 to everything
    unit = factors / norms[:, None]
    pool_unit = np.ascontiguousarray(unit[pool])
    frames = []
    size = result.params["batch_size"]
    for lo in tqdm(
        range(0, len(queries), size),
        desc="als similar items",
        disable=None if show_progress else True,
        unit="batch",
    ):
        batch = queries[lo : lo + size]
        with threadpool_limits(1, "blas"):
            ids, scores = topk(pool_unit, unit[batch], m + 1, num_threads=0)
        ids = pool[ids]
        keep = ids != batch[:, None]
        # each row keeps m items: drop itself, or the last one when itself is absent
        keep[keep.sum(axis=1) > m, -1] = False
        ids = ids[keep].reshape(len(batch), m)
        scores = scores[keep].reshape(len(batch), m)
        frames.append(
            pd.DataFrame(
                {
                    "item_id": np.repeat(result.item_ids[batch], m),
                    "similar_item_id": result.item_ids[ids.ravel()],
                    "similarity": scores.ravel().astype(np.float64),
                    "similarity_rank": np.tile(np.arange(1, m + 1, dtype=np.int32), len(batch)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def read_interactions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute("select visitor_id, item_id, weight from interactions").df()


def write_tables(
    con: duckdb.DuckDBPyConnection,
    candidates: pd.DataFrame,
    similar: pd.DataFrame,
    feature_version: str,
) -> None:
    """Replace `ml.als_candidates` and `ml.als_similar_items` in one transaction.

    Both carry the feature version they were fitted on: ranking_features only uses candidates
    of the cutoff it is built for, never stale ones from another run.
    """
    con.execute("create schema if not exists ml")
    con.execute("begin transaction")
    try:
        # as Arrow tables: DuckDB scans them faster than pandas' masked and categorical
        # columns (full scale, publish: 12.7M candidates, ~20% less time)
        con.register("candidates_df", pa.Table.from_pandas(candidates, preserve_index=False))
        con.register("similar_df", pa.Table.from_pandas(similar, preserve_index=False))
        con.execute(
            """
            create or replace table ml.als_candidates as
            select
                cast(visitor_id as bigint) as visitor_id,
                cast(item_id as bigint) as item_id,
                cast(als_score as double) as als_score,
                cast(als_rank as integer) as als_rank,
                cast(is_seen as boolean) as is_seen,
                cast(source as varchar) as source,
                cast(? as varchar) as feature_version,
            from candidates_df
            """,
            [feature_version],
        )
        con.execute(
            """
            create or replace table ml.als_similar_items as
            select
                cast(item_id as bigint) as item_id,
                cast(similar_item_id as bigint) as similar_item_id,
                cast(similarity as double) as similarity,
                cast(similarity_rank as integer) as similarity_rank,
                cast(? as varchar) as feature_version,
            from similar_df
            """,
            [feature_version],
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    finally:
        con.unregister("candidates_df")
        con.unregister("similar_df")
