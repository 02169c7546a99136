"""Ranking metrics: small pure functions with one signature, and one helper that averages them.

Every metric takes `recommended` (item ids, best first), `relevant` (the set of item ids the
visitor interacted with in the evaluation window) and `k`, and returns a float in [0, 1].
A visitor with no relevant item is not evaluated (the caller filters them out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from recsys.settings import SEED

Metric = Callable[[Sequence[int], set[int], int], float]


def precision_at_k(recommended: Sequence[int], relevant: set[int], k: int) -> float:
    """Hits in the top k divided by k (not by the number of items recommended)."""
    return sum(1 for item in recommended[:k] if item in relevant) / k


def recall_at_k(recommended: Sequence[int], relevant: set[int], k: int) -> float:
    """Hits in the top k divided by the number of relevant items."""
    if not relevant:
        return 0.0
    return sum(1 for item in recommended[:k] if item in relevant) / len(relevant)


def ndcg_at_k(recommended: Sequence[int], relevant: set[int], k: int) -> float:
    """Binary-gain DCG of the top k divided by the DCG of an ideal ranking of min(|rel|, k)."""
    dcg = sum(
        1.0 / math.log2(rank + 2) for rank, item in enumerate(recommended[:k]) if item in relevant
    )
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def map_at_k(recommended: Sequence[int], relevant: set[int], k: int) -> float:
    """Sum of precision at each hit's rank, divided by min(|relevant|, k)."""
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for rank, item in enumerate(recommended[:k]):
        if item in relevant:
            hits += 1
            total += hits / (rank + 1)
    return total / min(len(relevant), k)


def hit_rate_at_k(recommended: Sequence[int], relevant: set[int], k: int) -> float:
    """1 if any of the top k is relevant, else 0."""
    return 1.0 if any(item in relevant for item in recommended[:k]) else 0.0


def mrr_at_k(recommended: Sequence[int], relevant: set[int], k: int) -> float:
    """1 / rank of the first relevant item in the top k (0 when there is none)."""
    for rank, item in enumerate(recommended[:k]):
        if item in relevant:
            return 1.0 / (rank + 1)
    return 0.0


METRICS: dict[str, Metric] = {
    "precision": precision_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "map": map_at_k,
    "hit_rate": hit_rate_at_k,
    "mrr": mrr_at_k,
}


def catalogue_coverage(lists: Iterable[Sequence[int]], catalogue_size: int, k: int) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    if catalogue_size <= 0:
        return 0.0
    shown: set[int] = set()
    for items in lists:
        shown.update(items[:k])
    return len(shown) / catalogue_size


def evaluate(
    recommendations: Mapping[int, Sequence[int]],
    truth: Mapping[int, set[int]],
    ks: Sequence[int] = (10, 20),
    catalogue_size: int | None = None,
) -> dict[str, float]:
    """Mean of every metric at every k over the visitors of `truth` that have relevant items.

    A visitor in `truth` without recommendations counts as an empty list (all metrics 0), so
    a model cannot look better by skipping hard visitors.

    The means are computed at once on a visitors x ranks matrix of hits rather than by calling
    the functions above per visitor (a full-scale evaluation has ~10^5 visitors, three models
    and twelve metrics); a test checks both give the same numbers.
    """
    out, _ = evaluate_per_visitor(recommendations, truth, ks, catalogue_size)
    return out


def evaluate_per_visitor(
    recommendations: Mapping[int, Sequence[int]],
    truth: Mapping[int, set[int]],
    ks: Sequence[int] = (10, 20),
    catalogue_size: int | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`evaluate`'s means, and each metric's value per visitor (in `truth`'s order of the
    visitors with relevant items), for intervals over visitors (`bootstrap_intervals`)."""
    visitors = [v for v, items in truth.items() if items]
    depth = max(ks) if ks else 0
    hits = np.zeros((len(visitors), depth), dtype=bool)
    shown = np.zeros((len(visitors), depth), dtype=np.int64)
    filled = np.zeros((len(visitors), depth), dtype=bool)
    for row, visitor in enumerate(visitors):
        recommended = list(recommendations.get(visitor, ()))[:depth]
        relevant = truth[visitor]
        shown[row, : len(recommended)] = recommended
        filled[row, : len(recommended)] = True
        hits[row, : len(recommended)] = [item in relevant for item in recommended]
    n_relevant = np.array([len(truth[v]) for v in visitors], dtype=np.int64)
    return evaluate_matrix(shown, filled, hits, n_relevant, ks, catalogue_size)


def evaluate_matrix(
    shown: np.ndarray,
    filled: np.ndarray,
    hits: np.ndarray,
    n_relevant: np.ndarray,
    ks: Sequence[int] = (10, 20),
    catalogue_size: int | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`evaluate_per_visitor` on lists already laid out as visitors x ranks matrices: `shown`
    (item ids), `filled` (False past the end of a short list), `hits` (the item is relevant)
    and each visitor's number of relevant items (> 0). Columns up to max(ks) are read."""
    depth = max(ks) if ks else 0
    if shown.shape[1] < depth:  # shorter lists than the deepest k: pad with empty ranks
        pad = ((0, 0), (0, depth - shown.shape[1]))
        shown, filled, hits = (np.pad(a, pad) for a in (shown, filled, hits))
    out: dict[str, float] = {}
    values_of: dict[str, np.ndarray] = {}
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    for k in ks:
        per_visitor = _metrics_from_hits(hits[:, :k].astype(np.float64), n_relevant, k)
        for name in METRICS:
            values = per_visitor[name]
            out[f"{name}@{k}"] = float(values.mean()) if len(values) else 0.0
            values_of[f"{name}@{k}"] = values
        if catalogue_size:
            # pandas' hash table: np.unique sorts (0.3 s a call on 65,000 x 20 items)
            out[f"coverage@{k}"] = len(pd.unique(shown[:, :k][filled[:, :k]])) / catalogue_size
    return out, values_of


def bootstrap_intervals(
    per_visitor: Mapping[str, Mapping[str, np.ndarray]],
    pairs: Sequence[tuple[str, str]] = (),
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = SEED,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    """Percentile bootstrap intervals over visitors of every model's metric means, and of the
    differences `a - b` for each pair (a, b) of models.

    Every model was scored on the same visitors (the arrays of `per_visitor[model][metric]`
    are aligned), so each resample draws one set of visitors for all models: the intervals of
    a difference are paired, much narrower than two models' intervals side by side. A resample
    is a count per visitor, applied to every column as one matrix product per batch (a
    full-scale evaluation has ~10^5 visitors and ~60 model x metric columns).
    """
    columns = [(m, k) for m, metrics in per_visitor.items() for k in metrics]
    if not columns:
        return {}, {}
    n = len(per_visitor[columns[0][0]][columns[0][1]])
    if n == 0:
        return {m: {k: [0.0, 0.0] for k in ms} for m, ms in per_visitor.items()}, {}
    values = np.column_stack([per_visitor[m][k] for m, k in columns]).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, len(columns)))
    batch = max(1, min(n_resamples, 5_000_000 // n))
    for lo in range(0, n_resamples, batch):
        size = min(batch, n_resamples - lo)
        draws = rng.integers(0, n, (size, n))
        weights = np.zeros((size, n))
        for row in range(size):
            weights[row] = np.bincount(draws[row], minlength=n)
        means[lo : lo + size] = weights @ values / n
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    index = {column: i for i, column in enumerate(columns)}
    intervals: dict[str, dict[str, list[float]]] = {}
    for (model, metric), i in index.items():
        intervals.setdefault(model, {})[metric] = [float(low[i]), float(high[i])]
    differences: dict[str, dict[str, list[float]]] = {}
    for a, b in pairs:
        for metric in per_visitor[a]:
            if (b, metric) not in index:
                continue
            diff = means[:, index[(a, metric)]] - means[:, index[(b, metric)]]
            lo_d, hi_d = np.percentile(diff, [tail, 100 - tail])
            differences.setdefault(f"{a} - {b}", {})[metric] = [float(lo_d), float(hi_d)]
    return intervals, differences


def _metrics_from_hits(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each metric of METRICS per visitor, from hits (visitors x k, 1.0 = relevant item at that
    rank, 0 past the end of a short list) and the number of relevant items (> 0)."""
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1)
    n_hits = hits.sum(axis=1)
    cut = np.minimum(n_relevant, k).astype(int)
    ideal = np.cumsum(discount)[cut - 1]
    first = np.argmax(hits > 0, axis=1)
    return {
        "precision": n_hits / k,
        "recall": n_hits / n_relevant,
        "ndcg": (hits @ discount) / ideal,
        "map": (np.cumsum(hits, axis=1) / ranks * hits).sum(axis=1) / cut,
        "hit_rate": (n_hits > 0).astype(np.float64),
        "mrr": np.where(n_hits > 0, 1.0 / (first + 1), 0.0),
    }
