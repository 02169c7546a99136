"""POST /v1/recommendations: ranking at request time, strategies, filters, bad bodies."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api import features, recommend
from api.snapshot import Snapshot
from models_ml import ranker
from recsys.candidate_sources import POPULAR_CANDIDATES
from tests.api_snapshots import category_of
from tests.unit.api.conftest import items

URL = "/v1/recommendations"


def snapshot_of(client: TestClient) -> Snapshot:
    snapshot = client.app.state.store.current  # type: ignore[attr-defined]
    assert snapshot is not None
    return snapshot


def test_a_known_visitor_without_a_session_gets_the_candidates_ranked(
    client: TestClient,
) -> None:
    response = client.post(URL, json={"visitor_id": 1001, "k": 100})
    assert response.status_code == 200
    body = response.json()
    assert body["strategy"] == "personalized"
    assert body["snapshot_version"] == response.headers["x-snapshot-version"]
    got = [row["item_id"] for row in body["items"]]
    ranked = [row for row in body["items"] if row["source"] == "ranker"]
    # the pool of recsys.candidate_sources: the ALS candidates, the similar items of the
    # visitor's latest items, popular items
    snapshot = snapshot_of(client)
    pool, sources = recommend.candidate_pool(snapshot, 1001, [])
    source_of = dict(zip(pool.tolist(), sources.tolist(), strict=True))
    assert {i for i, s in source_of.items() if s in ("als", "revisit")} == set(range(1, 41))
    assert {source_of[i] for i in (20, 21)} == {"revisit"}  # met by the visitor
    assert sum(s == "popular" for s in sources) == POPULAR_CANDIDATES
    # every candidate but the bought and unavailable ones, best score first
    unavailable = {i for i in source_of if not snapshot.items.available_of(np.array([i]))[0]}
    assert {row["item_id"] for row in ranked} == set(source_of) - {20} - unavailable
    assert {7, 8} <= unavailable
    scores = [row["score"] for row in ranked]
    assert scores == sorted(scores, reverse=True)
    assert not {7, 8, 20} & set(got)
    # the scores are the ranker's, fed as models_ml.ranker.score feeds it
    items_ = np.array([row["item_id"] for row in ranked])
    rows = features.feature_rows(
        snapshot, 1001, items_, np.array([source_of[i] for i in items_.tolist()], dtype=object)
    )
    assert set(rows["candidate_source"]) == {"als", "revisit", "popular"}
    expected = ranker.score(snapshot.ranker.model, rows)
    assert scores == pytest.approx(np.round(expected, 6).tolist(), abs=1e-6)


def test_an_unknown_visitor_with_a_session_gets_similar_items_ranked(client: TestClient) -> None:
    body = client.post(URL, json={"session_item_ids": [5, 6], "k": 6}).json()
    assert body["strategy"] == "session"
    assert body["visitor_id"] is None
    # similar to 6 and 5: 7..11 and 6, less the unavailable 7 and 8, and popular items, ranked
    snapshot = snapshot_of(client)
    pool, sources = recommend.candidate_pool(snapshot, None, [5, 6])
    assert set(pool[sources == "similar"].tolist()) >= {6, 9, 10, 11}
    assert set(pool[sources == "popular"].tolist()) == set(range(59, 49, -1))
    assert [row["source"] for row in body["items"]] == ["ranker"] * 6
    assert {row["item_id"] for row in body["items"]} <= set(pool.tolist())


def test_the_session_adds_candidates_to_a_known_visitor(client: TestClient) -> None:
    body = client.post(URL, json={"visitor_id": 1001, "session_item_ids": [45], "k": 100}).json()
    assert body["strategy"] == "personalized"
    ranked = {row["item_id"] for row in body["items"] if row["source"] == "ranker"}
    assert {46, 47, 48, 49, 50} <= ranked  # similar to 45, not among the ALS candidates


def test_a_visitor_with_history_and_no_session_is_ranked_on_their_latest_items(
    client: TestClient,
) -> None:
    body = client.post(URL, json={"visitor_id": 2001, "k": 3}).json()
    assert body["strategy"] == "session"
    assert {row["item_id"] for row in body["items"]} <= {31, 32, 33, 34, 35, 36}


def test_nothing_to_go_on_gives_popular_items(client: TestClient) -> None:
    for body in ({}, {"visitor_id": 9999}, {"session_item_ids": [999_999]}):
        response = client.post(URL, json=body)
        assert response.json()["strategy"] == "popular", body
        assert items(response) == list(range(59, 49, -1))


def test_filters_apply_before_ranking(client: TestClient) -> None:
    body = client.post(
        URL,
        json={
            "visitor_id": 1001,
            "session_item_ids": [45],
            "k": 50,
            "category_id": 12,
            "exclude_item_ids": [2, 5, 47],
        },
    ).json()
    got = [row["item_id"] for row in body["items"]]
    assert got and {category_of(i) for i in got} == {12}
    assert not {2, 5, 47, 20, 8} & set(got)
    assert len(got) == len(set(got))


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"k": 0}, ["body", "k"]),
        ({"k": 101}, ["body", "k"]),
        ({"k": "5"}, ["body", "k"]),
        ({"visitor_id": "1001"}, ["body", "visitor_id"]),
        ({"visitor_id": -1}, ["body", "visitor_id"]),
        ({"visitor_id": 10**18}, ["body", "visitor_id"]),
        ({"visitor_id": True}, ["body", "visitor_id"]),
        ({"session_item_ids": [1, "x"]}, ["body", "session_item_ids", 1]),
        ({"session_item_ids": list(range(101))}, ["body", "session_item_ids"]),
        ({"exclude_item_ids": list(range(1001))}, ["body", "exclude_item_ids"]),
        ({"category_id": 1.5}, ["body", "category_id"]),
        ({"visitors": 1}, ["body", "visitors"]),
    ],
)
def test_a_bad_body_is_a_422_naming_the_field(
    client: TestClient, body: dict[str, object], where: list[object]
) -> None:
    response = client.post(URL, json=body)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [where]


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"null", b"\xff\xfe", b"\x80\x81abc"])
def test_a_body_that_is_not_a_request_is_a_422(client: TestClient, content: bytes) -> None:
    response = client.post(URL, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_a_body_over_the_limit_is_a_413(client: TestClient) -> None:
    limit = client.app.state.settings.recsys_api_max_body_bytes  # type: ignore[attr-defined]
    big = b'{"session_item_ids": [' + b"1," * limit + b"1]}"
    response = client.post(URL, content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]

    def chunks():  # no content-length: counted as it arrives
        yield b'{"session_item_ids": ['
        for _ in range(limit // 1000 + 1):
            yield b"1," * 500
        yield b"1]}"

    response = client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_ranker_without_compiled_trees_answers_the_same(client: TestClient) -> None:
    """A snapshot whose trees api.trees cannot compile is scored by CatBoost, off the event
    loop: same answers, scores included."""
    snapshot = snapshot_of(client)
    assert snapshot.ranker.compiled is not None  # the fixture's ranker compiles
    bodies = [
        {"visitor_id": 1001, "k": 100},
        {"session_item_ids": [5, 6], "k": 6},
        {"visitor_id": 1001, "session_item_ids": [45], "k": 100},
        {"visitor_id": 2001, "k": 3},
    ]
    compiled = [client.post(URL, json=body).json() for body in bodies]
    saved, snapshot.ranker.compiled = snapshot.ranker.compiled, None
    try:
        plain = [client.post(URL, json=body).json() for body in bodies]
    finally:
        snapshot.ranker.compiled = saved
    for mine, theirs in zip(compiled, plain, strict=True):
        assert mine["items"] == theirs["items"] and mine["items"]
        assert mine["strategy"] == theirs["strategy"]
