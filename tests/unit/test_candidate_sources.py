"""The source tag as the ranker sees it: its position in SOURCES, missing when unknown."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.candidate_sources import SOURCES, source_codes


def test_each_tag_is_its_position_and_anything_else_is_missing() -> None:
    codes = source_codes(np.array([*SOURCES, "other", None], dtype=object))
    assert codes.dtype == np.float32
    np.testing.assert_array_equal(codes[:4], [0, 1, 2, 3])
    assert np.isnan(codes[4:]).all()


def test_a_column_from_the_warehouse_codes_alike() -> None:
    column = pd.Series(["similar", "als", None], dtype="string")
    np.testing.assert_array_equal(source_codes(column.to_numpy(dtype=object)), [2, 0, np.nan])
