"""Ranking metrics: small pure functions with one signature, and one helper that averages them.

Every metric takes `recommended` (item ids, best first), `relevant` (the set of item ids the
visitor interacted with in the evaluation window) and `k`, and returns a float in [0, 1].
A visitor with no relevant item is not evaluated (the caller filters them out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

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
    """
    visitors = [v for v, items in truth.items() if items]
    out: dict[str, float] = {}
    for k in ks:
        for name, metric in METRICS.items():
            values = [metric(recommendations.get(v, ()), truth[v], k) for v in visitors]
            out[f"{name}@{k}"] = sum(values) / len(values) if values else 0.0
        if catalogue_size:
            out[f"coverage@{k}"] = catalogue_coverage(
                (recommendations.get(v, ()) for v in visitors), catalogue_size, k
            )
    return out
