"""Small things a client author tripped on: HEAD, the unknown category as a filter, one order of
checks on GET and POST, times with their zone."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient


def test_head_is_a_get_without_its_body(client: TestClient) -> None:
    path = "/v1/recommendations/1001?k=5"
    got = client.get(path, headers={"Accept-Encoding": "identity"})
    head = client.head(path, headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert head.headers["etag"] == got.headers["etag"]
    assert client.head("/healthz").status_code == 200
    assert client.head("/v1/events").status_code == 405  # a POST-only route has no GET


def test_the_unknown_category_filters_as_answers_write_it(client: TestClient) -> None:
    unknown = client.get("/v1/recommendations/1001?k=20&category_id=-1")
    assert unknown.status_code == 200
    items = unknown.json()["items"]
    assert items and all(item["category_id"] == -1 for item in items)  # the world has one
    posted = client.post("/v1/recommendations", json={"visitor_id": 1001, "category_id": -1})
    assert posted.status_code == 200
    items = posted.json()["items"]
    assert items and all(item["category_id"] == -1 for item in items)
    # other negative numbers are still refused
    assert client.get("/v1/recommendations/1001?category_id=-2").status_code == 422
    assert client.post("/v1/recommendations", json={"category_id": -2}).status_code == 422


def test_a_bad_request_is_a_422_with_or_without_a_snapshot(
    client_for: Callable[..., TestClient],
) -> None:
    empty = client_for(None)
    assert empty.get("/v1/recommendations/1001?k=0").status_code == 422
    assert empty.post("/v1/recommendations", json={"k": 0}).status_code == 422
    # a valid one is the 503
    assert empty.post("/v1/recommendations", json={"k": 5}).status_code == 503


def test_readiness_gives_the_cutoff_in_iso_8601_utc(client: TestClient) -> None:
    cutoff = client.get("/readyz").json()["cutoff_at"]
    assert cutoff[10] == "T" and cutoff.endswith("Z")
