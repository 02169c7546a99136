"""Request-time features: the mart's defaults, the documented choices for non-candidates, and
scores equal to `models_ml.ranker.score`. (Parity with the dbt mart itself is checked on a real
warehouse in tests/integration/test_api_pipeline.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api import features
from api.snapshot import Snapshot
from models_ml import ranker


@pytest.fixture(scope="module")
def snapshot(client: TestClient) -> Snapshot:
    current = client.app.state.store.current  # type: ignore[attr-defined]
    assert current is not None
    return current


def rows(snapshot: Snapshot, visitor: int | None, item_ids: list[int]) -> dict[int, dict]:
    frame = features.feature_rows(snapshot, visitor, np.array(item_ids))
    assert list(frame.columns) == ["visitor_id", "item_id", *features.FEATURE_COLUMNS]
    return {int(r["item_id"]): r for r in frame.to_dict("records")}


def test_a_candidate_the_visitor_bought(snapshot: Snapshot) -> None:
    row = rows(snapshot, 1001, [20])[20]
    assert row["als_rank"] == 20 and row["is_seen"]
    assert row["als_score"] == pytest.approx(0.9 - 19 * 0.8 / 39, rel=1e-6)
    assert (row["category_id"], row["root_category_id"], row["is_available"]) == (12, 1, True)
    assert (row["price"], row["item_views_7d"], row["item_popularity_score"]) == (30.0, 6, 2.0)
    assert math.isnan(row["item_purchase_rate"])  # null in the snapshot stays missing
    assert (row["visitor_events"], row["visitor_recency_days"]) == (12, 1.5)
    assert row["has_viewed_item"] and row["has_carted_item"] and row["has_purchased_item"]
    assert (row["pair_events"], row["pair_weight"]) == (3, 5.5)
    assert row["days_since_item_interaction"] == pytest.approx(1.125)  # 27 hours before cutoff
    assert (row["category_events"], row["category_affinity_share"]) == (5, pytest.approx(0.4))
    assert row["category_affinity_score"] == pytest.approx(2.8)
    assert row["days_since_category_event"] == pytest.approx(2.0)
    assert not row["has_carted_in_category"] and not row["is_top_category"]


def test_the_top_category_and_a_cart_in_it(snapshot: Snapshot) -> None:
    row = rows(snapshot, 1001, [1])[1]
    assert (row["als_rank"], row["is_seen"], row["category_id"]) == (1, False, 11)
    assert row["is_top_category"] and row["has_carted_in_category"]
    assert row["category_events"] == 7
    assert not row["has_viewed_item"] and row["pair_events"] == 0
    assert math.isnan(row["days_since_item_interaction"])


def test_an_item_that_is_not_a_candidate(snapshot: Snapshot) -> None:
    row = rows(snapshot, 1001, [45])[45]
    assert math.isnan(row["als_score"])  # missing: below every score for CatBoost
    assert row["als_rank"] == 41  # beyond the longest list (40 here)
    assert not row["is_seen"]
    seen = rows(snapshot, 2001, [30])[30]  # no candidates at all, but an interaction
    assert math.isnan(seen["als_score"]) and seen["als_rank"] == 41 and seen["is_seen"]


def test_the_candidate_source_of_als_candidates_is_theirs_and_else_the_callers(
    snapshot: Snapshot,
) -> None:
    items = np.array([1, 20, 45, 50])
    given = np.array(["popular", "similar", "popular", "similar"], dtype=object)
    frame = features.feature_rows(snapshot, 1001, items, given)
    # 1 and 20 are ALS candidates of 1001 (20 met): the mart's tags, whatever the caller says
    assert frame["candidate_source"].tolist() == ["als", "revisit", "popular", "similar"]
    assert features.feature_rows(snapshot, 1001, items[2:])["candidate_source"].tolist() == [
        "similar",
        "similar",
    ]  # the default: a session's similar items


def test_unknown_items_and_visitors_take_the_marts_defaults(snapshot: Snapshot) -> None:
    found = rows(snapshot, None, [60, 999])
    unknown = found[999]
    assert (unknown["category_id"], unknown["root_category_id"]) == (-1, -1)
    assert unknown["is_available"]
    assert (unknown["item_views_all"], unknown["item_popularity_score"]) == (0, 0)
    for name in ("price", "item_cart_rate", "item_trend_7d", "item_days_since_last_event"):
        assert math.isnan(unknown[name]), name
    no_category = found[60]  # in the catalogue, with category and availability unknown
    assert (no_category["category_id"], no_category["is_available"]) == (-1, True)
    for name in ("visitor_events", "visitor_purchases", "pair_events", "category_events"):
        assert unknown[name] == 0, name
    for name in ("visitor_recency_days", "visitor_top_category_share"):
        assert math.isnan(unknown[name]), name
    assert not unknown["is_top_category"] and not unknown["is_seen"]
    # a visitor whose top category is unknown has no top category, not category -1
    assert not rows(snapshot, 2001, [60])[60]["is_top_category"]


def test_scores_are_those_of_models_ml_ranker(snapshot: Snapshot) -> None:
    cases = [
        (1001, [*range(1, 61), 999]),
        (2001, [30, 31, 45, 60]),
        (None, [1, 2, 3]),
        (1002, [50, 51, 7]),
    ]
    for visitor, item_ids in cases:
        pool = np.array(item_ids)
        mine = features.score(snapshot, features.feature_columns(snapshot, visitor, pool))
        theirs = ranker.score(snapshot.ranker.model, features.feature_rows(snapshot, visitor, pool))
        np.testing.assert_array_equal(mine, theirs)
    assert len(features.score(snapshot, features.feature_columns(snapshot, 1, np.zeros(0)))) == 0
