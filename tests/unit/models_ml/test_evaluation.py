"""Evaluation helpers: ranked lists per visitor and the side-by-side comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models_ml import evaluation


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "visitor_id": [2, 1, 1, 1, 2, 1],
            "item_id": [20, 10, 11, 12, 21, 13],
            "als_rank": [1, 1, 2, 3, 2, 4],
        }
    )


def test_ranked_lists_order_by_score_then_als_rank_and_cut_at_depth() -> None:
    score = np.array([0.1, 0.5, 0.9, 0.5, 0.7, 0.0])
    lists = evaluation.ranked_lists(frame(), score)
    assert lists == {1: [11, 10, 12, 13], 2: [21, 20]}  # 10 and 12 tie: ALS rank decides
    assert evaluation.ranked_lists(frame(), score, depth=2) == {1: [11, 10], 2: [21, 20]}


def test_compare_models_scores_every_model_on_the_same_visitors() -> None:
    f = frame().assign(
        is_seen=[False, True, False, False, False, False],
        candidate_source=["als", "revisit", "als", "als", "als", "als"],
    )
    # a popular candidate of visitor 2 after ALS's list: in the ranker's pool, not in ALS's
    f = pd.concat(
        [
            f,
            pd.DataFrame(
                {
                    "visitor_id": [2],
                    "item_id": [22],
                    "als_rank": [5],
                    "is_seen": [False],
                    "candidate_source": ["popular"],
                }
            ),
        ],
        ignore_index=True,
    )
    truth = {1: {12}, 2: {20}, 3: {99}}  # visitor 3 has no candidates: not evaluated
    seen = {1: {10, 12}}
    models, n, per_visitor = evaluation.compare_models(
        f,
        -f["als_rank"].to_numpy(dtype=float),
        popularity=[12, 20, 30],
        truth=truth,
        catalogue_size=10,
        seen=seen,
    )
    assert n == 2
    assert set(models) == {"popularity", "popularity_unseen", "als_unseen", "als", "als_catboost"}
    # per visitor, aligned: visitor 1 then 2
    assert per_visitor["popularity"]["mrr@10"].tolist() == [1.0, 0.5]
    # without met items: visitor 1 loses item 12 (met) from popularity's list
    assert per_visitor["popularity_unseen"]["mrr@10"].tolist() == [0.0, 0.5]
    # ALS without the met item 10: visitor 1's list is 11, 12, 13
    assert per_visitor["als_unseen"]["mrr@10"].tolist() == [0.5, 1.0]
    # ALS: visitor 1 finds 12 at rank 3, visitor 2 finds 20 at rank 1
    assert models["als"]["mrr@10"] == pytest.approx((1 / 3 + 1) / 2)
    # the popular item comes last: the same hits, one more item covered
    for name, value in models["als"].items():
        if not name.startswith("coverage"):
            assert models["als_catboost"][name] == value, name
    assert models["als"]["coverage@10"] == pytest.approx(6 / 10)  # never item 22
    assert models["als_catboost"]["coverage@10"] == pytest.approx(7 / 10)
    assert models["popularity"]["hit_rate@10"] == 1.0
    assert models["popularity"]["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)


def test_pool_recall_by_source_and_the_shops_revisit_rate() -> None:
    f = frame().assign(candidate_source=["als", "revisit", "als", "similar", "als", "popular"])
    truth = {1: {10, 11, 12, 99}, 2: {21, 30}}
    pool = evaluation.pool_recall(f, truth, seen={1: {10, 99}})
    assert pool["n_visitors"] == 2
    assert pool["recall"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert pool["recall_by_source"] == pytest.approx(
        {"als": (1 / 4 + 1 / 2) / 2, "revisit": (1 / 4) / 2, "similar": (1 / 4) / 2, "popular": 0}
    )
    assert pool["mean_pool_size"] == 3.0
    assert pool["mean_pool_size_by_source"] == {
        "als": 1.5,
        "revisit": 0.5,
        "similar": 0.5,
        "popular": 0.5,
    }
    assert pool["revisit_rate"] == pytest.approx(2 / 6)  # 10 and 99 of 6 relevant items


def test_compare_models_agrees_with_the_per_visitor_definitions() -> None:
    """The matrix layout of compare_models gives what ranked_lists and evaluate_per_visitor
    give visitor by visitor, on random pools with ties, short lists and met popular items."""
    from models_ml.metrics import evaluate_per_visitor

    rng = np.random.default_rng(3)
    n_rows = 4_000
    f = pd.DataFrame(
        {
            "visitor_id": rng.integers(0, 300, n_rows),
            "item_id": rng.integers(0, 200, n_rows),
            "als_rank": rng.integers(1, 60, n_rows),
            "candidate_source": rng.choice(["als", "revisit", "similar", "popular"], n_rows),
        }
    ).drop_duplicates(["visitor_id", "item_id"], ignore_index=True)
    scores = rng.integers(0, 5, len(f)).astype(float)  # many ties: ALS rank decides
    truth = {int(v): set(rng.integers(0, 200, rng.integers(0, 6)).tolist()) for v in range(350)}
    seen = {int(v): set(rng.integers(0, 60, rng.integers(0, 30)).tolist()) for v in range(350)}
    popularity = rng.permutation(200)[:120].tolist()
    models, n, per_visitor = evaluation.compare_models(f, scores, popularity, truth, 200, seen)

    known = set(f["visitor_id"].tolist())
    eval_truth = {v: items for v, items in truth.items() if v in known and items}
    rank = -f["als_rank"].to_numpy(dtype=float)
    unmet = (f["candidate_source"] == "als").to_numpy()
    from_als = unmet | (f["candidate_source"] == "revisit").to_numpy()
    expected = {
        "popularity": {v: popularity[:20] for v in eval_truth},
        "popularity_unseen": {
            v: [i for i in popularity if i not in seen.get(v, ())][:20] for v in eval_truth
        },
        "als_unseen": evaluation.ranked_lists(f[unmet], rank[unmet], 20),
        "als": evaluation.ranked_lists(f[from_als], rank[from_als], 20),
        "als_catboost": evaluation.ranked_lists(f, scores, 20),
    }
    assert n == len(eval_truth) > 200
    for name, lists in expected.items():
        means, values = evaluate_per_visitor(lists, eval_truth, evaluation.KS, 200)
        assert models[name] == pytest.approx(means), name
        for metric, array in values.items():
            np.testing.assert_allclose(per_visitor[name][metric], array, err_msg=name)
