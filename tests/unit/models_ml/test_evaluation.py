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
    f = frame()
    truth = {1: {12}, 2: {20}, 3: {99}}  # visitor 3 has no candidates: not evaluated
    models, n = evaluation.compare_models(
        f, -f["als_rank"].to_numpy(dtype=float), popularity=[12, 20], truth=truth, catalogue_size=10
    )
    assert n == 2
    assert set(models) == {"popularity", "als", "als_catboost"}
    # ALS: visitor 1 finds 12 at rank 3, visitor 2 finds 20 at rank 1
    assert models["als"]["mrr@10"] == pytest.approx((1 / 3 + 1) / 2)
    assert models["als_catboost"] == models["als"]  # same scores, same lists
    assert models["popularity"]["hit_rate@10"] == 1.0
    assert models["popularity"]["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
