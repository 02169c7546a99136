"""The OpenAPI spec as a client generator reads it: named operations, one error model for every
error answer, integer bounds as integers, the headers the answers carry."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from starlette.routing import Match

from api.main import PlainRoute
from api.schemas import MAX_ID


def test_operations_are_named_after_what_they_do(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ids = {
        (path, method): operation["operationId"]
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }
    assert ids[("/v1/recommendations/{visitor_id}", "get")] == "recommendations_for_visitor"
    assert ids[("/v1/recommendations", "post")] == "recommendations_for_session"
    assert ids[("/v1/items/{item_id}/similar", "get")] == "similar_items"
    assert ids[("/v1/events", "post")] == "post_events"
    assert len(set(ids.values())) == len(ids)


def test_every_error_answer_has_the_one_error_model(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")) or path == "/readyz":
                    continue  # /readyz's 503 is its readiness report, not an error
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ApiError"}, (path, status)
    # and the answers have that shape: a sentence, or the fields of a 422
    assert set(client.get("/v1/recommendations/x").json()) == {"detail"}
    assert isinstance(client.get("/v1/recommendations/x").json()["detail"], list)
    posted = client.post("/v1/recommendations", json={"k": "ten"})
    assert posted.status_code == 422 and isinstance(posted.json()["detail"], list)


def test_integer_bounds_are_integers(client: TestClient) -> None:
    text = client.get("/openapi.json").text
    bounds = re.findall(
        r'"(?:minimum|maximum|exclusiveMinimum|exclusiveMaximum)":\s*([^,}]+)', text
    )
    assert bounds and not [b for b in bounds if "." in b or "e" in b.lower()], bounds
    body = json.loads(text)["components"]["schemas"]["RecommendationRequest"]["properties"]
    assert body["k"]["maximum"] == 100
    assert f"{MAX_ID}" in text  # 10**18 - 1 exactly, not 1e+18 rounded up


def test_no_snapshot_says_when_to_ask_again(client_for: Callable[..., TestClient]) -> None:
    empty = client_for(None, recsys_api_poll_seconds=2.5)
    for answer in (
        empty.get("/v1/recommendations/1001"),
        empty.post("/v1/recommendations", json={"visitor_id": 1001}),
    ):
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "3"


def test_the_bodies_have_examples_that_are_valid(client: TestClient) -> None:
    from api import schemas

    spec = client.get("/openapi.json").json()["components"]["schemas"]
    for name in (
        "RecommendationRequest",
        "Event",
        "RecommendationList",
        "SimilarItems",
        "ApiError",
    ):
        examples = spec[name].get("examples")
        assert examples, name
        for example in examples:
            getattr(schemas, name).model_validate(example)  # raises when one is wrong


def test_the_plainly_served_routes_are_the_documented_ones(client: TestClient) -> None:
    """The two hottest routes answer through PlainRoute (in front of FastAPI's), with the same
    function that FastAPI documents: the schema shows what is served."""
    spec = client.get("/openapi.json").json()
    app: Any = client.app
    for template, sample in (
        ("/v1/recommendations/{visitor_id}", "/v1/recommendations/1001"),
        ("/v1/items/{item_id}/similar", "/v1/items/7/similar"),
    ):
        scope = {"type": "http", "method": "GET", "path": sample, "root_path": ""}
        serving = next(r for r in app.router.routes if r.matches(scope)[0] is Match.FULL)
        documented = next(
            r
            for r in app.router.routes
            if not isinstance(r, PlainRoute) and r.matches(scope)[0] is Match.FULL
        )
        assert isinstance(serving, PlainRoute) and serving.path == template
        assert serving.endpoint is documented.endpoint
        assert spec["paths"][template]["get"]["operationId"] == documented.endpoint.__name__
    assert all(r.path in spec["paths"] for r in app.router.routes if isinstance(r, PlainRoute))
