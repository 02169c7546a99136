"""GET /v1/recommendations/{visitor_id}: published lists, filters, refills, fallbacks, errors.

The shop is `tests/api_snapshots.default_world()`: visitor 1001 has the published list
1..6, 9..12 and ALS candidates 1..40; items 7 and 8 are unavailable and 1001 bought 20;
visitor 2001 has history (30, then 31) but no list; popular items are 59 down to 41.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.api_snapshots import category_of, default_world
from tests.unit.api.conftest import items, metric

PUBLISHED = [1, 2, 3, 4, 5, 6, 9, 10, 11, 12]


def test_a_known_visitor_gets_the_published_list(client: TestClient) -> None:
    response = client.get("/v1/recommendations/1001")
    assert response.status_code == 200
    body = response.json()
    assert body["visitor_id"] == 1001
    assert body["strategy"] == "personalized"
    assert items(response) == PUBLISHED
    assert [row["rank"] for row in body["items"]] == list(range(1, 11))
    assert {row["source"] for row in body["items"]} == {"ranker"}
    scores = [row["score"] for row in body["items"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(2.0)
    confidences = [row["confidence"] for row in body["items"]]
    assert confidences[0] == pytest.approx(0.1) and confidences[-1] == pytest.approx(0.5)
    assert [row["category_id"] for row in body["items"]] == [category_of(i) for i in PUBLISHED]
    assert body["snapshot_version"] == response.headers["x-snapshot-version"]
    assert body["model_version"] == response.headers["x-model-version"] == "fv1_test-catboost-42"


def test_k_cuts_the_list(client: TestClient) -> None:
    assert items(client.get("/v1/recommendations/1001?k=3")) == [1, 2, 3]


def test_excluded_items_are_refilled_from_the_als_candidates(client: TestClient) -> None:
    body = client.get("/v1/recommendations/1001?exclude=1,%202,999").json()
    assert [row["item_id"] for row in body["items"]] == [3, 4, 5, 6, 9, 10, 11, 12, 13, 14]
    assert [row["source"] for row in body["items"]] == ["ranker"] * 8 + ["als"] * 2
    assert body["items"][-1]["confidence"] is None
    assert body["strategy"] == "personalized"


def test_bought_and_unavailable_items_are_never_recommended(client: TestClient) -> None:
    got = items(client.get("/v1/recommendations/1001?k=30"))
    assert len(got) == 30
    assert not {7, 8, 20} & set(got)
    assert got[10:] == [13, 14, 15, 16, 17, 18, 19, *range(21, 34)]


def test_k_items_whenever_the_catalogue_has_them(client: TestClient) -> None:
    got = items(client.get("/v1/recommendations/1001?k=100"))
    # every item but the two unavailable ones and the one bought: list, candidates, popular,
    # then the rest of the catalogue (item 60, of unknown category and availability)
    assert sorted(got) == sorted(set(range(1, 61)) - {7, 8, 20})
    assert len(got) == len(set(got)) == 57
    assert got[-1] == 60


def test_a_category_filters_the_list_and_its_refill(client: TestClient) -> None:
    body = client.get("/v1/recommendations/1001?category_id=11&k=5").json()
    assert [row["item_id"] for row in body["items"]] == [1, 4, 10, 13, 16]
    assert {row["category_id"] for row in body["items"]} == {11}
    everything = items(client.get("/v1/recommendations/1001?category_id=11&k=100"))
    in_category = {i for i in range(1, 60) if category_of(i) == 11} - {7}
    assert sorted(everything) == sorted(in_category)


def test_an_unknown_visitor_gets_popular_items(client: TestClient) -> None:
    response = client.get("/v1/recommendations/9999?k=5")
    assert response.status_code == 200
    body = response.json()
    assert body["strategy"] == "popular"
    assert items(response) == [59, 58, 57, 56, 55]
    assert {row["source"] for row in body["items"]} == {"popular"}


def test_an_unknown_visitor_gets_popular_items_of_the_asked_category(client: TestClient) -> None:
    assert items(client.get("/v1/recommendations/9999?category_id=10&k=3")) == [57, 54, 51]
    # past the popular list, the rest of the category's catalogue
    everything = items(client.get("/v1/recommendations/9999?category_id=10&k=100"))
    assert sorted(everything) == [i for i in range(1, 60) if category_of(i) == 10]
    assert client.get("/v1/recommendations/9999?category_id=77").json()["items"] == []


def test_a_snapshot_without_popular_lists_per_category_fills_from_the_catalogue(
    client_for: Callable[..., TestClient],
) -> None:
    world = default_world()
    popular = world.tables["popular_items"]
    world.tables["popular_items"] = popular[popular["category_id"].isna()].reset_index(drop=True)
    client = client_for(world)
    # the category's catalogue by popularity, as after its popular list
    everything = items(client.get("/v1/recommendations/9999?category_id=10&k=100"))
    assert sorted(everything) == [i for i in range(1, 60) if category_of(i) == 10]
    assert items(client.get("/v1/recommendations/9999?k=5")) == [59, 58, 57, 56, 55]


def test_a_visitor_with_history_but_no_list_gets_similar_items(client: TestClient) -> None:
    body = client.get("/v1/recommendations/2001?k=7").json()
    assert body["strategy"] == "session"
    # similar to 31 (the latest) and 30, by summed similarity; then popular
    assert [row["item_id"] for row in body["items"]] == [32, 33, 34, 35, 31, 36, 59]
    assert [row["source"] for row in body["items"]][-2:] == ["similar", "popular"]


def test_popular_items_leave_out_what_the_visitor_bought(
    client_for: Callable[..., TestClient],
) -> None:
    world = default_world()
    interactions = world.tables["interactions"]
    bought = interactions.iloc[[0]].assign(visitor_id=3001, item_id=59)  # the most popular
    world.tables["interactions"] = pd.concat([interactions, bought], ignore_index=True)
    client = client_for(world)
    got = items(client.get("/v1/recommendations/3001?k=20"))
    assert 59 not in got and len(got) == 20


def test_answers_come_from_the_cache_the_second_time(client: TestClient) -> None:
    hits = metric(client, "recsys_cache_hits_total", cache="recommendations")
    misses = metric(client, "recsys_cache_misses_total", cache="recommendations")
    first = client.get("/v1/recommendations/1002?k=4&exclude=51").json()
    second = client.get("/v1/recommendations/1002?k=4&exclude=51").json()
    # the same answer, shown again: another impression
    assert first.pop("impression_id") != second.pop("impression_id")
    assert first == second
    assert [row["item_id"] for row in first["items"]] == [50, 52, 53, 54]
    assert metric(client, "recsys_cache_misses_total", cache="recommendations") == misses + 1
    assert metric(client, "recsys_cache_hits_total", cache="recommendations") == hits + 1


@pytest.mark.parametrize(
    ("query", "where"),
    [
        ("/v1/recommendations/abc", ["path", "visitor_id"]),
        ("/v1/recommendations/-1", ["path", "visitor_id"]),
        ("/v1/recommendations/1000000000000000000", ["path", "visitor_id"]),
        ("/v1/recommendations/1?k=0", ["query", "k"]),
        ("/v1/recommendations/1?k=101", ["query", "k"]),
        ("/v1/recommendations/1?k=ten", ["query", "k"]),
        ("/v1/recommendations/1?category_id=-2", ["query", "category_id"]),
        ("/v1/recommendations/1?category_id=-01", ["query", "category_id"]),
        ("/v1/recommendations/1?category_id=1.5", ["query", "category_id"]),
        ("/v1/recommendations/1?exclude=1,x", ["query", "exclude"]),
        ("/v1/recommendations/1?exclude=-5", ["query", "exclude"]),
        ("/v1/recommendations/1?exclude=1234567890123456789", ["query", "exclude"]),
        ("/v1/recommendations/1?exclude=" + ",".join(map(str, range(1001))), ["query", "exclude"]),
    ],
)
def test_bad_parameters_are_a_422_naming_them(
    client: TestClient, query: str, where: list[str]
) -> None:
    response = client.get(query)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [where]


def test_a_published_list_is_filtered_even_if_the_pipeline_slipped(
    client_for: Callable[..., TestClient],
) -> None:
    world = default_world()
    recs = world.tables["recommendations"]
    head = recs["visitor_id"] == 1001
    # the unavailable 7 and the bought 20 at the top of 1001's list
    recs.loc[head & (recs["rank"] == 1), "item_id"] = 7
    recs.loc[head & (recs["rank"] == 2), "item_id"] = 20
    client = client_for(world)
    assert items(client.get("/v1/recommendations/1001?k=3")) == [3, 4, 5]
    assert not {7, 20} & set(items(client.get("/v1/recommendations/1001?k=50")))
