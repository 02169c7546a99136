"""Metric functions: a perfect ranking is 1, no hit is 0, and one case worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models_ml.metrics import (
    METRICS,
    catalogue_coverage,
    evaluate,
    hit_rate_at_k,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_perfect_ranking_scores_one(name: str) -> None:
    relevant = {1, 2, 3}
    assert METRICS[name]([1, 2, 3], relevant, 3) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_no_hit_scores_zero(name: str) -> None:
    assert METRICS[name]([7, 8, 9, 10], {1, 2}, 4) == 0.0


def test_hand_computed_case() -> None:
    # relevant items at ranks 2 and 4 of the top 5; 3 relevant items in all
    recommended, relevant, k = [9, 1, 8, 2, 7], {1, 2, 3}, 5
    assert precision_at_k(recommended, relevant, k) == pytest.approx(2 / 5)
    assert recall_at_k(recommended, relevant, k) == pytest.approx(2 / 3)
    assert hit_rate_at_k(recommended, relevant, k) == 1.0
    assert mrr_at_k(recommended, relevant, k) == pytest.approx(1 / 2)
    # MAP: (1/2 + 2/4) / min(3, 5)
    assert map_at_k(recommended, relevant, k) == pytest.approx((0.5 + 0.5) / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(recommended, relevant, k) == pytest.approx(dcg / idcg)


def test_k_cuts_the_list() -> None:
    assert hit_rate_at_k([5, 1], {1}, 1) == 0.0
    assert precision_at_k([1], {1}, 10) == pytest.approx(0.1)  # divides by k


def test_evaluate_averages_and_counts_missing_visitors_as_misses() -> None:
    truth = {1: {10}, 2: {20}, 3: set()}
    recs = {1: [10, 11], 3: [30]}  # visitor 2 has no list; visitor 3 has nothing to find
    out = evaluate(recs, truth, ks=(10,), catalogue_size=4)
    assert out["hit_rate@10"] == pytest.approx(0.5)
    assert out["coverage@10"] == pytest.approx(2 / 4)  # items 10 and 11 over 4 items
    assert catalogue_coverage([[1, 2], [2, 3]], 10, 1) == pytest.approx(0.2)


def test_evaluate_gives_the_means_of_the_metric_functions() -> None:
    """`evaluate` computes on a hit matrix; it must agree with the functions it averages, on
    lists short and long, visitors without a list, and more relevant items than k."""
    import random

    rng = random.Random(3)
    truth = {v: set(rng.sample(range(60), rng.randint(0, 25))) for v in range(300)}
    recs = {v: rng.sample(range(60), rng.randint(0, 30)) for v in range(300) if rng.random() < 0.9}
    out = evaluate(recs, truth, ks=(1, 10, 20), catalogue_size=80)
    visitors = [v for v, items in truth.items() if items]
    for k in (1, 10, 20):
        for name, metric in METRICS.items():
            expected = sum(metric(recs.get(v, []), truth[v], k) for v in visitors) / len(visitors)
            assert out[f"{name}@{k}"] == pytest.approx(expected, rel=1e-12), (name, k)
        expected = catalogue_coverage((recs.get(v, []) for v in visitors), 80, k)
        assert out[f"coverage@{k}"] == pytest.approx(expected)
    assert evaluate(recs, {1: set()}, ks=(10,)) == {f"{name}@10": 0.0 for name in METRICS}


def test_bootstrap_intervals_bracket_the_mean_and_pair_the_models() -> None:
    from models_ml.metrics import bootstrap_intervals

    rng = np.random.default_rng(0)
    a = rng.random(400)
    per_visitor = {
        "a": {"ndcg@10": a},
        "same": {"ndcg@10": a.copy()},
        "better": {"ndcg@10": a + 0.01},  # better for every visitor by a hair
    }
    pairs = [("better", "a"), ("same", "a")]
    intervals, differences = bootstrap_intervals(per_visitor, pairs, n_resamples=300, seed=1)
    low, high = intervals["a"]["ndcg@10"]
    assert low < a.mean() < high
    assert 0.02 < high - low < 0.08  # ~ 4 standard errors of 400 uniform values
    # paired: a constant gain of 0.01 is certain, though the two intervals overlap widely
    assert differences["better - a"]["ndcg@10"] == pytest.approx([0.01, 0.01])
    assert intervals["better"]["ndcg@10"][0] < high
    assert differences["same - a"]["ndcg@10"] == [0.0, 0.0]
    # the same seed, the same intervals
    assert bootstrap_intervals(per_visitor, pairs, n_resamples=300, seed=1)[0] == intervals


def test_evaluate_per_visitor_agrees_with_the_means() -> None:
    from models_ml.metrics import evaluate_per_visitor

    recs = {1: [1, 2, 3], 2: [4, 5], 3: []}
    truth = {1: {2}, 2: {9}, 3: {1}, 4: set()}
    means, values = evaluate_per_visitor(recs, truth, ks=(10,))
    assert len(values["ndcg@10"]) == 3  # visitors with relevant items, in truth's order
    for name, mean in means.items():
        assert values[name].mean() == pytest.approx(mean)
    assert values["mrr@10"].tolist() == [0.5, 0.0, 0.0]
