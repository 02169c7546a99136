"""Split-conformal ranks: finite-sample threshold, coverage near nominal, monotone confidence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models_ml.conformal import ConformalCalibrator, calibrate, coverage, relevant_ranks


def hand_made(relevant_at: list[int], n_candidates: int = 5) -> tuple[np.ndarray, ...]:
    """One group per entry, scores descending, the only relevant candidate at the given rank."""
    groups, scores, labels = [], [], []
    for g, rank in enumerate(relevant_at):
        groups += [g] * n_candidates
        scores += [float(n_candidates - i) for i in range(n_candidates)]
        labels += [1 if i + 1 == rank else 0 for i in range(n_candidates)]
    return np.asarray(scores), np.asarray(groups), np.asarray(labels)


def synthetic(
    n_groups: int, n_candidates: int, seed: int, first_group: int = 0
) -> tuple[np.ndarray, ...]:
    """Exchangeable visitors: relevance is likelier for higher scores, but spread over ranks."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_groups, n_candidates))
    p = 1.0 / (1.0 + np.exp(-(0.8 * scores - 3.5)))
    labels = (rng.random(scores.shape) < p).astype(int) * rng.integers(1, 4, scores.shape)
    groups = np.repeat(np.arange(first_group, first_group + n_groups), n_candidates)
    return scores.ravel(), groups, labels.ravel()


def test_threshold_follows_the_finite_sample_formula() -> None:
    cal = calibrate(*hand_made([4, 2, 1, 3]), alpha=0.2)
    np.testing.assert_array_equal(cal.calibration_ranks, [1, 2, 3, 4])
    assert cal.prediction_set_size == 4  # ceil(5 * 0.8) = 4th smallest
    assert calibrate(*hand_made([4, 2, 1, 3]), alpha=0.5).prediction_set_size == 3  # ceil(2.5)
    # ceil(5 * 0.9) = 5 > n = 4: the whole list
    whole = calibrate(*hand_made([4, 2, 1, 3]), alpha=0.1)
    assert whole.prediction_set_size == whole.max_candidates == 5


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_empirical_coverage_is_within_three_points_of_nominal(alpha: float) -> None:
    cal = calibrate(*synthetic(4000, 100, seed=1), alpha=alpha, seed=11)
    report = coverage(cal, *synthetic(8000, 100, seed=2, first_group=10_000), seed=12)
    assert report["nominal"] == pytest.approx(1 - alpha)
    assert abs(report["empirical_coverage"] - (1 - alpha)) <= 0.03, report
    assert report["n_groups"] > 5000
    assert 1 < cal.prediction_set_size < 100  # a real threshold, not the whole list


def test_confidence_is_monotone_within_unit_interval() -> None:
    cal = calibrate(*synthetic(2000, 50, seed=3), alpha=0.1)
    ranks = np.arange(-1, cal.max_candidates + 5)
    values = cal.confidences(ranks)
    assert (np.diff(values) >= 0).all()
    assert values.min() == 0.0 and values.max() < 1.0
    assert cal.confidence(cal.prediction_set_size) >= 0.9
    assert cal.confidence(cal.prediction_set_size - 1) < 0.9 + 1 / (cal.n_calibration + 1)
    # by hand: ranks [1, 2, 3, 4] -> P(R <= 2) >= 2 / 5
    small = calibrate(*hand_made([4, 2, 1, 3]), alpha=0.2)
    assert small.confidence(2) == pytest.approx(2 / 5)
    assert small.confidence(0) == 0.0 and small.confidence(99) == pytest.approx(4 / 5)


def test_groups_without_relevant_candidate_are_ignored() -> None:
    scores, groups, labels = hand_made([4, 2, 1, 3])
    empty_scores, empty_groups, empty_labels = hand_made([0, 0, 0])  # rank 0: nothing relevant
    both = (
        np.r_[scores, empty_scores],
        np.r_[groups, empty_groups + 100],
        np.r_[labels, empty_labels],
    )
    cal = calibrate(*both, alpha=0.2)
    np.testing.assert_array_equal(cal.calibration_ranks, [1, 2, 3, 4])
    assert cal.n_ignored_groups == 3
    report = coverage(cal, *both)
    assert report["n_groups"] == 4 and report["n_ignored_groups"] == 3
    assert report["empirical_coverage"] == 1.0
    with pytest.raises(ValueError, match="no calibration group"):
        calibrate(empty_scores, empty_groups, empty_labels)
    assert coverage(cal, empty_scores, empty_groups, empty_labels)["empirical_coverage"] is None


def test_one_random_relevant_item_per_group_is_seeded_and_order_free() -> None:
    scores, groups, labels = synthetic(500, 30, seed=4)
    found = relevant_ranks(scores, groups, labels, seed=5)
    has_relevant = np.bincount(groups, weights=labels > 0) > 0
    assert found.n_groups == 500 and found.n_groups_with_relevant == has_relevant.sum()
    assert len(found.ranks) == found.n_groups_with_relevant
    assert found.ranks.min() >= 1 and found.ranks.max() <= 30
    again = relevant_ranks(scores, groups, labels, seed=5)
    np.testing.assert_array_equal(found.ranks, again.ranks)
    shuffle = np.random.default_rng(6).permutation(len(scores))
    moved = relevant_ranks(scores[shuffle], groups[shuffle], labels[shuffle], seed=5)
    np.testing.assert_array_equal(found.ranks, moved.ranks)
    other_seed = relevant_ranks(scores, groups, labels, seed=6)
    assert not np.array_equal(found.ranks, other_seed.ranks)  # several relevant per group


def test_ties_keep_input_order() -> None:
    # all scores equal: the rank is the row's position within its group
    scores = np.zeros(6)
    groups = np.array([7, 7, 7, 8, 8, 8])
    labels = np.array([0, 0, 2, 0, 1, 0])
    np.testing.assert_array_equal(relevant_ranks(scores, groups, labels).ranks, [3, 2])


def test_ranks_match_a_sort_with_ties_and_missing_scores() -> None:
    # one relevant row per group, so the rank is fully determined: compare with pandas
    rng = np.random.default_rng(8)
    n_groups, n_candidates = 300, 25
    scores = np.round(rng.normal(size=n_groups * n_candidates), 1)  # many ties
    scores[rng.random(len(scores)) < 0.05] = np.nan
    groups = np.repeat(rng.permutation(n_groups) * 3 + 1, n_candidates)
    labels = np.zeros(len(scores))
    labels[np.arange(n_groups) * n_candidates + rng.integers(0, n_candidates, n_groups)] = 1
    order = rng.permutation(len(scores))
    scores, groups, labels = scores[order], groups[order], labels[order]
    frame = pd.DataFrame({"g": groups, "s": np.nan_to_num(scores, nan=-np.inf), "y": labels})
    frame["rank"] = frame.groupby("g")["s"].rank(method="first", ascending=False)
    expected = frame.loc[frame["y"] > 0].sort_values("g")["rank"].to_numpy()
    np.testing.assert_array_equal(relevant_ranks(scores, groups, labels).ranks, expected)


def test_round_trip_through_json() -> None:
    cal = calibrate(*synthetic(1000, 40, seed=7), alpha=0.2, seed=3)
    back = ConformalCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(back.calibration_ranks, cal.calibration_ranks)
    assert back.prediction_set_size == cal.prediction_set_size
    assert (back.alpha, back.max_candidates, back.seed) == (0.2, 40, 3)
    assert back.n_ignored_groups == cal.n_ignored_groups


def test_bad_input_is_refused() -> None:
    scores, groups, labels = hand_made([1, 2])
    with pytest.raises(ValueError, match="alpha"):
        calibrate(scores, groups, labels, alpha=1.0)
    with pytest.raises(ValueError, match="length"):
        calibrate(scores[:-1], groups, labels)


def test_recalibrating_on_the_test_window_corrects_a_shift() -> None:
    from models_ml.pipeline import recalibrate, recent_visitors

    # the training window's visitors put their relevant items higher than the test window's
    # (a sharper score-relevance link): sets calibrated there are too small afterwards
    rng = np.random.default_rng(5)

    def window(n_groups: int, sharpness: float, first: int) -> pd.DataFrame:
        scores = rng.normal(size=(n_groups, 60))
        p = 1.0 / (1.0 + np.exp(-(sharpness * scores - 3.5)))
        return pd.DataFrame(
            {
                "visitor_id": np.repeat(np.arange(first, first + n_groups), 60),
                "score": scores.ravel(),
                "label": (rng.random(scores.shape) < p).astype(int).ravel(),
            }
        )

    train = window(3000, 2.0, 0)
    test = window(8000, 0.6, 100_000)
    trained = calibrate(train["score"], train["visitor_id"], train["label"], alpha=0.1)
    recent, cover, shifted = recalibrate(trained, test, test["score"].to_numpy())
    assert shifted["empirical_coverage"] < 0.85  # the shift, measured on the same visitors
    assert abs(cover["empirical_coverage"] - 0.9) <= 0.02, cover
    assert recent.prediction_set_size > trained.prediction_set_size
    # calibrated on one half of the test window's visitors, measured on the other
    half = recent_visitors(test)
    assert cover["n_groups"] + recent.n_calibration <= test["visitor_id"].nunique()
    assert 0.45 < len(half) / test["visitor_id"].nunique() < 0.55
