"""`_item_facts` (each published item's category and availability, at load) by a table indexed
by id gives what the catalogue search (`Items.lookup`) gives, unknown ids included."""

from __future__ import annotations

import numpy as np
import pytest

from api import loader as loader_module
from api.loader import _item_facts
from api.snapshot import Items


def _items(ids: list[int]) -> Items:
    rng = np.random.default_rng(7)
    n = len(ids)
    return Items(
        ids=np.asarray(ids, dtype=np.int64),
        category=rng.integers(-1, 50, n).astype(np.int64),
        root_category=np.zeros(n, dtype=np.int64),
        available=rng.random(n) < 0.7,
        features={},
    )


@pytest.mark.parametrize("dense", [True, False])
def test_the_same_facts_as_the_catalogue_search(
    dense: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _items([0, 3, 4, 9, 100, 1_000, 1_001, 50_000])
    wanted = np.asarray([3, 0, 50_000, 7, 1_001, 60_000, 2**40, -5, 4, 4, 100], dtype=np.int64)
    monkeypatch.setattr(loader_module, "BATCH_ROWS", 4)  # several chunks
    if not dense:
        monkeypatch.setattr(loader_module, "DENSE_ID_SPAN", 10)
    category, available = _item_facts(items, wanted)
    expected_available, expected_category = items.lookup(wanted)
    assert category.tolist() == expected_category.tolist()
    assert available.tolist() == expected_available.tolist()
    assert category[3] == -1 and available[3]  # unknown: category -1, available


def test_int32_ids_and_an_empty_catalogue() -> None:
    items = _items([2, 5, 6])
    wanted = np.asarray([5, 6, 1], dtype=np.int32)
    category, available = _item_facts(items, wanted)
    assert category.tolist() == items.lookup(wanted.astype(np.int64))[1].tolist()
    empty = _items([])
    category, available = _item_facts(empty, wanted)
    assert category.tolist() == [-1, -1, -1] and available.all()
