"""Split-conformal confidence for ranked recommendations: rank-based prediction sets.

Each visitor has a list of candidates ordered by the ranker's score. The nonconformity of a
relevant candidate (label > 0) is its rank in that list (1 = best; ties in score are broken by
the order of the input rows, so pass rows in a fixed order). Ranks rather than raw scores keep
the calibration valid when the score scale shifts between time windows or model versions.

Calibration (`calibrate`) uses held-out groups (visitors) that the ranker was neither trained
nor early-stopped on. Groups without any relevant candidate are ignored. From every other group
ONE relevant candidate is drawn at random (seeded), so that each group gives one calibration
point and the points are exchangeable. With n points and level 1 - alpha, the prediction set is
the top r* candidates, r* being the ceil((n + 1)(1 - alpha))-th smallest calibration rank (the
finite-sample correction), or the whole list when that index exceeds n.

What is guaranteed. Take a new visitor exchangeable with the calibration visitors (same
distribution, same ranker and candidate generator) who has at least one relevant item among the
candidates, and one of those relevant items drawn at random, at rank R. Then

    P(R <= r*) >= 1 - alpha                                     (marginal coverage)
    P(R <= r)  >= confidence(r) = #{calibration ranks <= r} / (n + 1)    for every r

(if j calibration ranks are <= r, the j-th smallest is <= r, and a new exchangeable rank falls
at or below the j-th smallest of n + 1 with probability >= j / (n + 1)). The probability is over
the calibration visitors, the new visitor and the random draw; averaged over visitors, at least
a share 1 - alpha of their relevant candidates lies in the top r*. `coverage` measures this
share on a test window: the report states it beside the nominal 1 - alpha.

What is not guaranteed.
- Not per visitor (conditional) coverage: some kinds of visitor are covered less, others more.
- Nothing about visitors whose relevant items are not among the candidates (candidate recall is
  measured elsewhere) or who have no relevant item at all: both are outside the statement.
- Not the probability that a visitor interacts with a given item.
- Not across a shift in behaviour: a later test window is only approximately exchangeable with
  the calibration window, which is why the empirical coverage is measured there.
- Not exact: ranks are integers, so coverage may exceed 1 - alpha by up to the share of
  calibration points at rank r* (the bound above is a lower bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from recsys.settings import SEED


@dataclass(frozen=True, eq=False)
class ConformalCalibrator:
    """Sorted calibration ranks and the prediction-set size r* they give at level 1 - alpha."""

    alpha: float
    calibration_ranks: np.ndarray  # one per calibration group, sorted ascending
    prediction_set_size: int  # r*: the top r* candidates form the prediction set
    max_candidates: int  # the longest calibration list ("the whole list")
    n_ignored_groups: int  # calibration groups without a relevant candidate
    seed: int

    @property
    def n_calibration(self) -> int:
        return len(self.calibration_ranks)

    @property
    def nominal(self) -> float:
        return 1.0 - self.alpha

    def confidence(self, rank: int) -> float:
        """Lower bound on P(R <= rank): #{calibration ranks <= rank} / (n + 1).

        Non-decreasing in `rank`, 0 below rank 1, at most n / (n + 1) < 1, and at least
        1 - alpha at `prediction_set_size` whenever r* is a calibration rank.
        """
        return float(self.confidences(np.asarray([rank]))[0])

    def confidences(self, ranks: ArrayLike) -> np.ndarray:
        """`confidence` for an array of ranks at once."""
        counts = np.searchsorted(self.calibration_ranks, np.asarray(ranks), side="right")
        return counts / (self.n_calibration + 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary from which `from_dict` rebuilds the calibrator."""
        counts = np.bincount(self.calibration_ranks, minlength=1)[1:]
        return {
            "alpha": self.alpha,
            "nominal": self.nominal,
            "prediction_set_size": self.prediction_set_size,
            "max_candidates": self.max_candidates,
            "n_calibration": self.n_calibration,
            "n_ignored_groups": self.n_ignored_groups,
            "seed": self.seed,
            "rank_counts": counts.tolist(),  # rank_counts[i] = calibration points at rank i + 1
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformalCalibrator:
        counts = np.asarray(data["rank_counts"], dtype=np.int64)
        return cls(
            alpha=float(data["alpha"]),
            calibration_ranks=np.repeat(np.arange(1, len(counts) + 1, dtype=np.int64), counts),
            prediction_set_size=int(data["prediction_set_size"]),
            max_candidates=int(data["max_candidates"]),
            n_ignored_groups=int(data["n_ignored_groups"]),
            seed=int(data["seed"]),
        )


@dataclass(frozen=True, eq=False)
class RelevantRanks:
    """One random relevant candidate's rank per group that has one, and the group counts."""

    ranks: np.ndarray  # int64, one per group with a relevant candidate (in group-code order)
    n_groups: int
    n_groups_with_relevant: int
    max_candidates: int


def relevant_ranks(
    scores: ArrayLike, groups: ArrayLike, labels: ArrayLike, seed: int = SEED
) -> RelevantRanks:
    """Rank (1 = best score in its group) of one relevant candidate drawn at random per group.

    Rows are candidates; `groups` holds their visitor ids and `labels` their relevance (> 0 is
    relevant, NaN is not). Equal scores keep the input row order; NaN scores rank last. The
    draw is seeded and independent of the input row order when scores have no ties.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    g = np.asarray(groups)
    if not len(s) == len(y) == len(g):
        raise ValueError(
            f"scores, groups and labels differ in length: {len(s)}, {len(g)}, {len(y)}"
        )
    if len(s) == 0:
        return RelevantRanks(np.zeros(0, dtype=np.int64), 0, 0, 0)
    codes, uniques = pd.factorize(g, sort=True)
    if (codes < 0).any():
        raise ValueError("groups holds missing values")
    s = np.where(np.isnan(s), -np.inf, s)  # NaN scores rank last
    sizes = np.bincount(codes, minlength=len(uniques))

    # one relevant row per group, uniformly: order the relevant rows by group and score (so
    # that the draw does not depend on the input row order), give each a random key, and keep
    # the row with the smallest key in each group
    rel = np.flatnonzero(y > 0)
    rel = rel[np.lexsort((-s[rel], codes[rel]))]
    keys = np.random.default_rng(seed).random(len(rel))
    rel = rel[np.lexsort((keys, codes[rel]))]
    first = np.r_[True, codes[rel][1:] != codes[rel][:-1]] if len(rel) else rel.astype(bool)
    chosen = rel[first]

    # its rank without sorting all rows: 1 + the rows of its group with a higher score, or an
    # equal score earlier in the input
    chosen_score = np.full(len(uniques), np.nan)
    chosen_row = np.full(len(uniques), -1)
    chosen_score[codes[chosen]] = s[chosen]
    chosen_row[codes[chosen]] = chosen
    target = chosen_score[codes]
    ahead = (s > target) | ((s == target) & (np.arange(len(s)) < chosen_row[codes]))
    ranks = np.bincount(codes, weights=ahead, minlength=len(uniques))[codes[chosen]] + 1
    return RelevantRanks(
        ranks=ranks.astype(np.int64),
        n_groups=len(uniques),
        n_groups_with_relevant=len(chosen),
        max_candidates=int(sizes.max()),
    )


def threshold_rank(sorted_ranks: np.ndarray, alpha: float, max_candidates: int) -> int:
    """r* = the ceil((n + 1)(1 - alpha))-th smallest rank, or the whole list if that is > n."""
    n = len(sorted_ranks)
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)  # the epsilon absorbs float error in the product
    if k > n:
        return max_candidates
    return int(sorted_ranks[max(k, 1) - 1])


def calibrate(
    scores: ArrayLike,
    groups: ArrayLike,
    labels: ArrayLike,
    alpha: float = 0.1,
    seed: int = SEED,
) -> ConformalCalibrator:
    """Calibrate r* at level 1 - alpha on held-out groups (see the module docstring)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    found = relevant_ranks(scores, groups, labels, seed)
    if found.n_groups_with_relevant == 0:
        raise ValueError("no calibration group has a relevant candidate")
    ranks = np.sort(found.ranks)
    return ConformalCalibrator(
        alpha=alpha,
        calibration_ranks=ranks,
        prediction_set_size=threshold_rank(ranks, alpha, found.max_candidates),
        max_candidates=found.max_candidates,
        n_ignored_groups=found.n_groups - found.n_groups_with_relevant,
        seed=seed,
    )


def coverage(
    calibrator: ConformalCalibrator,
    scores: ArrayLike,
    groups: ArrayLike,
    labels: ArrayLike,
    seed: int = SEED,
) -> dict[str, Any]:
    """Share of test groups whose randomly drawn relevant candidate ranks within r*.

    Only groups with a relevant candidate count (`n_groups`); `empirical_coverage` is None
    when there is none. `nominal` is 1 - alpha.
    """
    found = relevant_ranks(scores, groups, labels, seed)
    covered = found.ranks <= calibrator.prediction_set_size
    return {
        "nominal": calibrator.nominal,
        "empirical_coverage": float(covered.mean()) if len(covered) else None,
        "n_groups": found.n_groups_with_relevant,
        "n_ignored_groups": found.n_groups - found.n_groups_with_relevant,
        "prediction_set_size": calibrator.prediction_set_size,
        "n_calibration": calibrator.n_calibration,
    }
