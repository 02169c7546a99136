"""GET /v1/items/{item_id}/similar."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api_snapshots import category_of
from tests.unit.api.conftest import items


def test_similar_items_are_available_ones_then_popular_of_the_category(
    client: TestClient,
) -> None:
    response = client.get("/v1/items/5/similar?k=6")
    assert response.status_code == 200
    body = response.json()
    assert body["item_id"] == 5 and body["strategy"] == "similar"
    assert body["snapshot_version"] == response.headers["x-snapshot-version"]
    # 6..10 are similar to 5; 7 and 8 are unavailable; then popular items of 5's category
    assert items(response) == [6, 9, 10, 59, 56, 53]
    assert [row["source"] for row in body["items"]] == ["similar"] * 3 + ["popular"] * 3
    assert {category_of(i) for i in items(response)[3:]} == {category_of(5)}
    assert body["items"][0]["score"] == pytest.approx(0.9)


def test_the_item_itself_is_never_similar_to_itself(client: TestClient) -> None:
    got = items(client.get("/v1/items/59/similar?k=100"))
    assert 59 not in got and len(got) == len(set(got)) == 57  # all but 59, 7 and 8


def test_an_unknown_item_gets_popular_items(client: TestClient) -> None:
    body = client.get("/v1/items/123456/similar?k=3").json()
    assert body["strategy"] == "popular"
    assert [row["item_id"] for row in body["items"]] == [59, 58, 57]


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/v1/items/x/similar", ["path", "item_id"]),
        ("/v1/items/-3/similar", ["path", "item_id"]),
        ("/v1/items/3/similar?k=0", ["query", "k"]),
        ("/v1/items/3/similar?k=1000", ["query", "k"]),
    ],
)
def test_bad_parameters_are_a_422_naming_them(
    client: TestClient, path: str, where: list[str]
) -> None:
    response = client.get(path)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [where]
