"""Visitor splits for training, validation and calibration."""

from __future__ import annotations

import numpy as np
import pytest

from models_ml.steps import split_visitors

SHARES = (0.6, 0.2, 0.2)


def test_split_is_disjoint_complete_and_seeded() -> None:
    visitors = np.repeat(np.arange(100), 3)  # one row per candidate
    parts = split_visitors(visitors, SHARES, seed=7)
    assert [len(p) for p in parts] == [60, 20, 20]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(100))
    again = split_visitors(visitors, SHARES, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_every_part_gets_a_labelled_visitor_even_when_they_are_few() -> None:
    visitors = np.arange(50)
    labelled = np.array([3, 17, 41])
    for seed in range(20):
        parts = split_visitors(visitors, SHARES, seed=seed, labelled=labelled)
        assert [len(np.intersect1d(p, labelled)) for p in parts] == [1, 1, 1]
        assert np.array_equal(np.sort(np.concatenate(parts)), visitors)


def test_too_few_labelled_visitors_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot fill 3 parts"):
        split_visitors(np.arange(10), SHARES, seed=0, labelled=np.array([1, 2]))
