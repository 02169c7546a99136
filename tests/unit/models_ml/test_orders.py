"""The faster sorts and look-ups of the pipeline give exactly what the pandas / NumPy
formulations they replace give (issue 17): same rows, same order, ties included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models_ml import evaluation, pipeline, ranker, snapshot, steps
from recsys.candidate_sources import source_codes


def _candidates(rng: np.random.Generator, n_visitors: int = 400) -> pd.DataFrame:
    """Visitors with a few dozen candidates each: ranks 1..n with missing ones (similar and
    popular candidates), many tied scores, rows shuffled."""
    sizes = rng.integers(1, 60, n_visitors)
    visitors = np.repeat(rng.choice(10**6, n_visitors, replace=False), sizes)
    ranks = np.concatenate(
        [rng.permutation(np.r_[np.arange(1, s // 2 + 1), [np.nan] * (s - s // 2)]) for s in sizes]
    )
    frame = pd.DataFrame(
        {
            "visitor_id": visitors,
            "item_id": np.concatenate([rng.choice(5_000, s, replace=False) for s in sizes]),
            "als_rank": ranks,
            "is_available": rng.random(len(visitors)) < 0.9,
            "has_purchased_item": rng.random(len(visitors)) < 0.05,
            "score": rng.integers(0, 20, len(visitors)) / 4.0,  # ties on purpose
        }
    )
    return frame.sample(frac=1.0, random_state=1).reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_candidate_order_is_pandas_three_key_sort(seed: int) -> None:
    frame = _candidates(np.random.default_rng(seed))
    expected = frame.sort_values(["visitor_id", "als_rank", "item_id"]).index.to_numpy()
    order = steps.candidate_order(
        frame["visitor_id"].to_numpy(), frame["als_rank"].to_numpy(), frame["item_id"].to_numpy()
    )
    assert np.array_equal(order, expected)
    # duplicated keys and non-integer ranks take the stable fallbacks, still pandas' order
    doubled = pd.concat([frame, frame], ignore_index=True)
    expected = doubled.sort_values(["visitor_id", "als_rank", "item_id"], kind="stable")
    order = steps.candidate_order(
        doubled["visitor_id"].to_numpy(),
        doubled["als_rank"].to_numpy(),
        doubled["item_id"].to_numpy(),
    )
    assert np.array_equal(order, expected.index.to_numpy())
    halves = frame["als_rank"].to_numpy() / 2
    expected = frame.assign(als_rank=halves).sort_values(["visitor_id", "als_rank", "item_id"])
    order = steps.candidate_order(
        frame["visitor_id"].to_numpy(), halves, frame["item_id"].to_numpy()
    )
    assert np.array_equal(order, expected.index.to_numpy())


@pytest.mark.parametrize("seed", [0, 1])
def test_order_within_groups_is_a_two_key_lexsort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = _candidates(rng)
    groups, key = frame["visitor_id"].to_numpy(), frame["score"].to_numpy()
    assert np.array_equal(
        evaluation.order_within_groups(groups, key, groups_per_chunk=7), np.lexsort((key, groups))
    )
    ordered = np.sort(groups)  # already grouped: not sorted again
    assert np.array_equal(evaluation.order_within_groups(ordered, key), np.lexsort((key, ordered)))
    key = key.copy()
    key[::17], key[5::17] = np.nan, np.inf  # non-finite keys: NumPy's order (NaN last)
    assert np.array_equal(evaluation.order_within_groups(groups, key), np.lexsort((key, groups)))
    assert len(evaluation.order_within_groups(groups[:0], key[:0])) == 0


def test_top_recommendations_are_the_pandas_sort_and_cumcount() -> None:
    frame = _candidates(np.random.default_rng(3))
    frame = frame.iloc[
        steps.candidate_order(
            frame["visitor_id"].to_numpy(),
            frame["als_rank"].to_numpy(),
            frame["item_id"].to_numpy(),
        )
    ].reset_index(drop=True)
    scores = frame["score"].to_numpy()
    scored = frame[["visitor_id", "item_id", "is_available", "has_purchased_item"]].copy()
    scored["score"] = scores
    scored = scored[scored["is_available"] & ~scored["has_purchased_item"]]
    scored = scored.sort_values(["visitor_id", "score"], ascending=[True, False], kind="stable")
    scored["rank"] = scored.groupby("visitor_id").cumcount() + 1
    scored = scored[scored["rank"] <= 10]
    scored["confidence"] = scored["rank"].to_numpy() / 11
    expected = scored[["visitor_id", "item_id", "rank", "score", "confidence"]]
    got = snapshot.top_recommendations(frame, scores, lambda r: r / 11, top_k=10)
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True))


def test_the_sampled_groups_read_alone_give_the_same_sample() -> None:
    """train_ranker reads only the visitors `sampled_groups` names: `sample_negatives` on
    their rows is `sample_negatives` on the whole part."""
    rng = np.random.default_rng(4)
    frame = _candidates(rng, 600).rename(columns={"score": "label"})
    frame["label"] = (rng.random(len(frame)) < 0.03).astype(int)
    frame = frame.sort_values(["visitor_id", "als_rank", "item_id"], ignore_index=True)
    labelled = frame.loc[frame["label"] > 0, "visitor_id"].unique()
    part = np.sort(frame["visitor_id"].unique())[::2]
    for max_groups in (None, 5, 10**6):
        whole = pipeline.sample_negatives(frame[frame["visitor_id"].isin(part)], 3, 7, max_groups)
        chosen = pipeline.sampled_groups(part, labelled, 7, max_groups)
        alone = pipeline.sample_negatives(frame[frame["visitor_id"].isin(chosen)], 3, 7, max_groups)
        pd.testing.assert_frame_equal(alone, whole)


def test_coded_features_of_distinct_values_are_those_of_every_row() -> None:
    values = np.array(["als", "revisit", "similar", "popular", "other", None], dtype=object)
    col = pd.Series(np.random.default_rng(5).choice(values, ranker.CATEGORICAL_DTYPE_FROM * 2))
    expected = source_codes(col.to_numpy(dtype=object))
    for column in (col, col.astype("str"), col.astype("category")):
        assert np.array_equal(ranker._coded(source_codes, column), expected, equal_nan=True)


def test_pair_in_finds_exactly_the_given_pairs() -> None:
    frame = _candidates(np.random.default_rng(6))
    pairs = frame.sample(50, random_state=2)[["visitor_id", "item_id"]]
    pairs = pd.concat([pairs, pd.DataFrame({"visitor_id": [-5], "item_id": [10**7]})])
    expected = pd.MultiIndex.from_frame(frame[["visitor_id", "item_id"]]).isin(
        pd.MultiIndex.from_frame(pairs)
    )
    assert np.array_equal(evaluation._pair_in(frame, pairs), expected)
    assert not evaluation._pair_in(frame, pairs.iloc[:0]).any()


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_key_sorts_and_compares_as_the_columns(seed: int) -> None:
    """Negative and large values included: the key's order is the columns' lexicographic
    order and equal keys are equal rows; ranges too wide for 62 bits give None."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-(10**6), 10**6, 5_000)
    b = rng.integers(0, 3, 5_000)
    c = rng.integers(-50, 50, 5_000)
    key = evaluation.packed_key(a, b, c)
    assert key is not None
    assert np.array_equal(np.argsort(key, kind="stable"), np.lexsort((c, b, a)))
    rows = np.stack([a, b, c], axis=1)
    same = key[:, None] == key[None, :500]
    assert np.array_equal(same, (rows[:, None, :] == rows[None, :500, :]).all(axis=2))
    wide = np.array([0, 2**30])  # (2**30 + 1)**2 < 2**62, times 5 is not
    assert evaluation.packed_key(wide, wide) is not None
    assert evaluation.packed_key(wide, wide, np.array([0, 4])) is None
    empty = evaluation.packed_key(np.zeros(0, np.int64))
    assert empty is not None and empty.shape == (0,)
