"""The compiled ranker (api.trees): CatBoost's scores to the last bit, on models that split on
categories' CTRs and on missing values either way, and CatBoost itself wherever the compiled
trees cannot answer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from api import features, trees
from api.snapshot import Ranker

CATEGORIES = np.arange(40, dtype=np.int64) * 7 + 3
ROOTS = CATEGORIES % 5


def train(
    tmp_path: Path, nan_mode: str = "Min", depth: int = 4, **params: Any
) -> tuple[Any, list[str], list[str]]:
    """A small YetiRank model whose labels depend on the category, the numbers and their
    missingness, so that its trees split on all three (the root category, with 5 values, is
    one-hot encoded; the category's 40 go through CTRs)."""
    from catboost import CatBoostRanker, Pool

    rng = np.random.default_rng(7)
    n = 3000
    category = rng.choice(CATEGORIES, n)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    x[rng.random((n, 3)) < 0.2] = np.nan
    signal = (category % 3 == 0) + np.nan_to_num(x[:, 0], nan=2.0) + (np.isnan(x[:, 1]) * 1.5)
    label = (signal + rng.normal(scale=0.5, size=n) > 1.0).astype(float)
    names = ["als_score", "category_id", "root_category_id", "price", "pair_weight"]
    cats = ["category_id", "root_category_id"]
    data = {
        "als_score": x[:, 0],
        "category_id": [str(c) for c in category],
        "root_category_id": [str(c % 5) for c in category],
        "price": x[:, 1],
        "pair_weight": x[:, 2],
    }
    import pandas as pd

    frame = pd.DataFrame(data)[names]
    pool = Pool(frame, label, cat_features=cats, group_id=np.arange(n) // 20)
    model = CatBoostRanker(
        iterations=60,
        depth=depth,
        loss_function="YetiRank",
        nan_mode=nan_mode,
        random_seed=0,
        verbose=0,
        allow_writing_files=False,
        train_dir=str(tmp_path),
        thread_count=1,
        **params,
    )
    model.fit(pool)
    return model, names, cats


def rows(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(numeric transposed, categorical) rows: numbers around zero, a fifth missing, and the
    categories of the catalogue plus -1."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(3, n)).astype(np.float32)
    numeric[rng.random((3, n)) < 0.2] = np.nan
    category = rng.choice(np.concatenate([CATEGORIES, [-1]]), n)
    root = np.where(category == -1, -1, category % 5)
    return numeric, {"category_id": category, "root_category_id": root}


def catboost_scores(model: Any, numeric: np.ndarray, cats: dict[str, np.ndarray]) -> np.ndarray:
    ranker = Ranker(
        model=model,
        features=list(model.feature_names_),
        cat_features=["category_id", "root_category_id"],
        metadata={},
    )
    return features._catboost_score(ranker, np.ascontiguousarray(numeric.T), cats)


def compiled_of(model: Any, names: list[str], cats: list[str]) -> trees.CompiledRanker:
    compiled = trees.compile_ranker(
        model, names, cats, {"category_id": CATEGORIES, "root_category_id": ROOTS}
    )
    assert compiled is not None
    return compiled


@pytest.mark.parametrize(("nan_mode", "depth"), [("Min", 4), ("Max", 6), ("Min", 2)])
def test_the_compiled_trees_score_as_catboost(tmp_path: Path, nan_mode: str, depth: int) -> None:
    model, names, cats = train(tmp_path, nan_mode, depth)
    compiled = compiled_of(model, names, cats)
    assert compiled.tables, "the model should split on a category's CTR"
    assert compiled.nan_right.any() == (nan_mode == "Max")
    for n, seed in ((1, 1), (2, 2), (3, 3), (100, 4), (1000, 5)):
        numeric, categorical = rows(n, seed)
        mine = compiled.score(numeric, categorical)
        assert mine is not None
        np.testing.assert_array_equal(mine, catboost_scores(model, numeric, categorical))


def test_features_score_uses_catboost_for_a_category_it_has_no_row_for(tmp_path: Path) -> None:
    model, names, cats = train(tmp_path)
    compiled = compiled_of(model, names, cats)
    numeric, categorical = rows(50, 4)
    categorical["category_id"][7] = 999_999  # not in the catalogue the tables were made for
    assert compiled.score(numeric, categorical) is None
    ranker = Ranker(model=model, features=names, cat_features=cats, metadata={})
    ranker.compiled = compiled
    columns = {"item_id": np.arange(50), **categorical}
    columns |= {name: numeric[j] for j, name in enumerate(ranker.numeric_features)}
    scores = features.score(SimpleNamespace(ranker=ranker), columns)  # type: ignore[arg-type]
    np.testing.assert_array_equal(scores, catboost_scores(model, numeric, categorical))


def test_compiled_scores_that_differ_from_catboost_are_refused(tmp_path: Path) -> None:
    model, names, cats = train(tmp_path)
    compiled = compiled_of(model, names, cats)
    values = {"category_id": CATEGORIES, "root_category_id": ROOTS}
    floats = json_of(model, tmp_path)["features_info"]["float_features"]
    assert trees._agrees(model, compiled, cats, floats, values)
    tampered = compiled.leaf_values.copy()
    tampered[5] += 1e-12
    wrong = dataclasses.replace(compiled, leaf_values=tampered)
    assert not trees._agrees(model, wrong, cats, floats, values)


def test_models_it_does_not_cover_are_left_to_catboost(tmp_path: Path) -> None:
    # CTRs of a combination of the two categories: not a function of one value
    model, names, cats = train(tmp_path, max_ctr_complexity=4, depth=6, one_hot_max_size=1)
    spec = json_of(model, tmp_path)
    combined = [c for c in spec["features_info"]["ctrs"] if len(c["elements"]) > 1]
    assert combined, "the model should have combination CTRs"
    assert trees.compile_ranker(model, names, cats, {"category_id": CATEGORIES}) is None
    # trees that are not oblivious
    model, names, cats = train(tmp_path, grow_policy="Lossguide")
    assert trees.compile_ranker(model, names, cats, {"category_id": CATEGORIES}) is None
    # a categorical feature whose values the snapshot does not tabulate
    model, names, cats = train(tmp_path)
    assert trees.compile_ranker(model, names, ["category_id", "price"], {}) is None


def json_of(model: Any, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "model.json"
    model.save_model(str(path), format="json")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


@pytest.mark.parametrize(
    "values",
    [[5, 3, 5, -1, 0], [7, 1 << 40, 7], [], [-5, 2, 2], [(1 << 24) - 1, 0]],
)
def test_the_distinct_values_of_a_category_column_include_unknown(values: list[int]) -> None:
    expected = np.unique(np.asarray([*values, -1], dtype=np.int64))
    got = trees._distinct(np.asarray(values, dtype=np.int64))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
