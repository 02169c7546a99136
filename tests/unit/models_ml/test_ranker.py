"""CatBoost ranker: learns a two-feature signal, searches within budget, reproduces, round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models_ml import ranker
from models_ml.metrics import ndcg_at_k

DEFAULTS_BEFORE_TRAINING = dict(ranker.DEFAULT_PARAMS)
FEATURES = ["f1", "f2", "noise", "is_flag", "category_id"]
CATS = ["category_id"]
FAST = {"iterations": 80, "od_wait": 20}  # keeps each trial under a second


def make_groups(n_groups: int, n_candidates: int, seed: int, first_group: int = 0) -> pd.DataFrame:
    """Graded labels (0-3) from f1 + f2 + noise; noise, is_flag and category carry nothing."""
    rng = np.random.default_rng(seed)
    n = n_groups * n_candidates
    f1, f2 = rng.normal(size=n), rng.normal(size=n)
    latent = f1 + f2 + 0.5 * rng.normal(size=n)
    label = np.digitize(latent, [1.5, 2.2, 2.9])  # 0 below 1.5, then 1, 2, 3
    return pd.DataFrame(
        {
            "visitor_id": np.repeat(np.arange(first_group, first_group + n_groups), n_candidates),
            "item_id": np.tile(np.arange(n_candidates), n_groups),
            "f1": f1,
            "f2": f2,
            "noise": rng.normal(size=n),
            "is_flag": rng.random(n) < 0.3,
            "category_id": rng.integers(0, 6, size=n),
            "label": label,
        }
    )


def mean_ndcg10(df: pd.DataFrame, scores: np.ndarray) -> float:
    """Binary NDCG@10 (relevant = label > 0) averaged over groups with a relevant item."""
    frame = df.assign(score=scores).sort_values(["visitor_id", "score"], ascending=[True, False])
    values = [
        ndcg_at_k(group["item_id"].tolist(), set(group.loc[group["label"] > 0, "item_id"]), 10)
        for _, group in frame.groupby("visitor_id")
        if (group["label"] > 0).any()
    ]
    return float(np.mean(values))


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return {
        "train": make_groups(300, 20, seed=1),
        "valid": make_groups(100, 20, seed=2, first_group=1000),
        "test": make_groups(150, 20, seed=3, first_group=2000),
    }


@pytest.fixture(scope="module")
def trained(data: dict[str, pd.DataFrame]) -> ranker.RankerResult:
    return ranker.train(
        data["train"],
        data["valid"],
        FEATURES,
        CATS,
        params=FAST,
        search_budget_s=60,
        n_trials=2,
        progress=lambda line: None,
    )


def test_beats_random_and_single_feature_on_held_out_groups(
    data: dict[str, pd.DataFrame], trained: ranker.RankerResult
) -> None:
    test = data["test"]
    model = mean_ndcg10(test, ranker.score(trained, test))
    random = mean_ndcg10(test, np.random.default_rng(0).random(len(test)))
    single = mean_ndcg10(test, test["f1"].to_numpy())
    assert model > random + 0.25, (model, random)
    assert model > single + 0.08, (model, single)
    assert 0.0 < trained.best_valid_ndcg10 <= 1.0


def test_result_records_the_search(trained: ranker.RankerResult) -> None:
    assert [row["trial"] for row in trained.search_log] == [1, 2]
    assert all({"params", "score", "seconds"} <= row.keys() for row in trained.search_log)
    assert trained.search_log[0]["params"]["depth"] == ranker.DEFAULT_PARAMS["depth"]
    assert trained.best_valid_ndcg10 == max(row["score"] for row in trained.search_log)
    assert trained.params["iterations"] == FAST["iterations"]
    assert trained.params["random_seed"] == trained.seed == 42
    assert trained.features == FEATURES and trained.cat_features == CATS
    assert trained.train_seconds > 0
    assert ranker.DEFAULT_PARAMS == DEFAULTS_BEFORE_TRAINING  # copied, never mutated


def test_tiny_budget_runs_exactly_one_trial(data: dict[str, pd.DataFrame]) -> None:
    lines: list[str] = []
    result = ranker.train(
        data["train"], data["valid"], FEATURES, CATS, params=FAST, search_budget_s=0.0,
        n_trials=5, progress=lines.append,
    )  # fmt: skip
    assert len(result.search_log) == 1
    assert any("trial 1/5" in line for line in lines)
    assert any("budget" in line for line in lines)


def test_same_seed_same_predictions(
    data: dict[str, pd.DataFrame], trained: ranker.RankerResult
) -> None:
    again = ranker.train(
        data["train"], data["valid"], FEATURES, CATS, params=FAST, n_trials=2,
        progress=lambda line: None,
    )  # fmt: skip
    assert again.search_log[1]["params"] == trained.search_log[1]["params"]
    np.testing.assert_array_equal(
        ranker.score(again, data["test"]), ranker.score(trained, data["test"])
    )


def test_save_load_round_trip(
    tmp_path: Path, data: dict[str, pd.DataFrame], trained: ranker.RankerResult
) -> None:
    out = ranker.save(trained, tmp_path / "model", feature_version="fv1", extra={"t1": "x"})
    assert (out / "ranker.cbm").is_file() and (out / "ranker.json").is_file()
    model, meta = ranker.load(out)
    np.testing.assert_array_equal(
        ranker.score(model, data["test"]), ranker.score(trained, data["test"])
    )
    assert meta["params"] == trained.params
    assert meta["seed"] == trained.seed
    assert meta["features"] == trained.features and meta["cat_features"] == trained.cat_features
    assert meta["feature_version"] == "fv1" and meta["extra"] == {"t1": "x"}
    assert meta["best_valid_ndcg10"] == trained.best_valid_ndcg10
    assert meta["search_log"] == trained.search_log
    assert meta["catboost_version"]
    assert json.loads((out / "ranker.json").read_text()) == meta


def test_groups_without_positive_are_dropped_and_counted(data: dict[str, pd.DataFrame]) -> None:
    train = data["train"].copy()
    valid = data["valid"].copy()
    train.loc[train["visitor_id"] < 40, "label"] = 0
    valid.loc[valid["visitor_id"] < 1010, "label"] = np.nan  # absent labels count as 0
    n_train_pos = train.groupby("visitor_id")["label"].max().gt(0).sum()
    n_valid_pos = valid.groupby("visitor_id")["label"].max().gt(0).sum()
    lines: list[str] = []
    result = ranker.train(
        train, valid, FEATURES, CATS, params=FAST, search_budget_s=0.0, progress=lines.append
    )
    assert result.n_train_groups == n_train_pos
    assert result.n_valid_groups == n_valid_pos
    assert result.dropped_groups == {
        "train": 300 - n_train_pos,
        "valid": 100 - n_valid_pos,
    }
    assert result.dropped_groups["train"] >= 40 and result.dropped_groups["valid"] >= 10
    assert any("dropped" in line for line in lines)


def test_unsorted_rows_are_sorted_by_group(data: dict[str, pd.DataFrame]) -> None:
    shuffled = data["train"].sample(frac=1.0, random_state=7)
    assert not shuffled["visitor_id"].is_monotonic_increasing
    result = ranker.train(
        shuffled, data["valid"].sample(frac=1.0, random_state=8), FEATURES, CATS,
        params=FAST, search_budget_s=0.0, progress=lambda line: None,
    )  # fmt: skip
    with_positive = data["train"].groupby("visitor_id")["label"].max().gt(0).sum()
    assert result.n_train_groups == with_positive
    test = data["test"]
    random = mean_ndcg10(test, np.random.default_rng(0).random(len(test)))
    assert mean_ndcg10(test, ranker.score(result, test)) > random + 0.25


def test_score_handles_types_order_and_empty(
    data: dict[str, pd.DataFrame], trained: ranker.RankerResult
) -> None:
    test = data["test"].head(200)
    expected = ranker.score(trained, test)
    # other column order, categories as strings, booleans as nullable, small batches
    retyped = test[list(reversed(test.columns))].assign(
        category_id=test["category_id"].astype(str), is_flag=test["is_flag"].astype("boolean")
    )
    np.testing.assert_allclose(ranker.score(trained, retyped, batch_rows=33), expected)
    # unknown category as NaN in a float column is the marts' -1
    with_nan = test.assign(category_id=test["category_id"].astype(float))
    with_nan.loc[with_nan.index[:5], "category_id"] = np.nan
    minus_one = test.assign(category_id=test["category_id"])
    minus_one.loc[minus_one.index[:5], "category_id"] = -1
    np.testing.assert_array_equal(ranker.score(trained, with_nan), ranker.score(trained, minus_one))
    # missing numeric values are allowed
    gaps = test.assign(f2=test["f2"].where(test.index % 3 != 0))
    assert np.isfinite(ranker.score(trained, gaps)).all()
    assert ranker.score(trained, test.iloc[:0]).shape == (0,)
    with pytest.raises(KeyError, match="f1"):
        ranker.score(trained, test.drop(columns=["f1"]))


def test_large_frames_score_as_small_ones(
    data: dict[str, pd.DataFrame], trained: ranker.RankerResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Categories go to CatBoost as pandas categoricals from CATEGORICAL_DTYPE_FROM rows on,
    as plain arrays below: the same predictions either way, numbers or strings."""
    test = data["test"]
    as_text = test.assign(category_id=test["category_id"].astype(str))
    monkeypatch.setattr(ranker, "CATEGORICAL_DTYPE_FROM", 10**9)
    plain = ranker.feature_frame(test, FEATURES, CATS)
    assert plain["category_id"].dtype == np.int64
    expected, expected_text = ranker.score(trained, test), ranker.score(trained, as_text)
    monkeypatch.setattr(ranker, "CATEGORICAL_DTYPE_FROM", 1)
    assert isinstance(
        ranker.feature_frame(test, FEATURES, CATS)["category_id"].dtype, pd.CategoricalDtype
    )
    np.testing.assert_array_equal(ranker.score(trained, test), expected)
    np.testing.assert_array_equal(ranker.score(trained, as_text), expected_text)
    np.testing.assert_array_equal(expected_text, expected)


def test_feature_importance_and_plot(tmp_path: Path, trained: ranker.RankerResult) -> None:
    importance = ranker.feature_importance(trained)
    assert list(importance.columns) == ["feature", "importance"]
    assert sorted(importance["feature"]) == sorted(FEATURES)
    assert importance["importance"].is_monotonic_decreasing
    assert set(importance["feature"].head(2)) == {"f1", "f2"}
    png = ranker.plot_feature_importance(importance, tmp_path / "plots" / "importance.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_positive_group_is_an_error(data: dict[str, pd.DataFrame]) -> None:
    train = data["train"].assign(label=0)
    with pytest.raises(ValueError, match="no training group"):
        ranker.train(train, data["valid"], FEATURES, CATS, params=FAST, progress=lambda s: None)


def test_a_later_trial_stops_at_the_search_budget(
    data: dict[str, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock that moves one second per reading: trial 1 (never cut) takes a few "seconds",
    trial 2 starts inside the budget and is stopped when the budget runs out, with a model."""

    class Clock:
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 1.0
            return self.now

    monkeypatch.setattr(ranker, "time", Clock())
    lines: list[str] = []
    result = ranker.train(
        data["train"], data["valid"], FEATURES, CATS, params={"iterations": 200, "od_wait": 200},
        search_budget_s=30.0, n_trials=2, progress=lines.append,
    )  # fmt: skip
    first, second = result.search_log
    assert not first["stopped_at_budget"] and first["best_iteration"] > 20
    # started at ~4 s of search, stopped at 30 s: ~26 readings, one per iteration
    assert second["stopped_at_budget"] and second["best_iteration"] < 30
    assert any("stopped at the search budget" in line for line in lines)
    assert 0.0 < result.best_valid_ndcg10 <= 1.0
