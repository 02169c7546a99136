"""API keys on /v1, open health and metrics, keys never in logs, unsafe settings refused."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from recsys.settings import Settings
from tests.api_snapshots import default_world
from tests.unit.api.conftest import KEY, make_settings

OTHER = "another-valid-key-0123456789"


@pytest.fixture
def locked(client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(default_world(), recsys_api_keys=f"{KEY}, {OTHER}")


def test_v1_needs_a_valid_key(locked: TestClient) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": ""}):
        response = locked.get("/v1/recommendations/1001", headers=headers)
        assert response.status_code == 401, headers
        assert "X-API-Key" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "ApiKey"
    for key in (KEY, OTHER):
        assert locked.get("/v1/recommendations/1001", headers={"X-API-Key": key}).status_code == 200


def test_every_v1_route_is_locked(locked: TestClient) -> None:
    assert locked.post("/v1/recommendations", json={}).status_code == 401
    assert locked.get("/v1/items/1/similar").status_code == 401
    assert locked.post("/v1/events", json={}).status_code == 401
    assert locked.get("/v1/nothing-here").status_code == 401  # no hint of what exists
    # the key is checked before the body is read: a bad body without a key is still a 401
    response = locked.post(
        "/v1/recommendations", content=b"{broken", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


def test_health_and_metrics_stay_open(locked: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert locked.get(path).status_code == 200, path
    schemes = locked.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes == {"APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


def test_keys_never_reach_the_logs(
    client_for: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(default_world(), recsys_api_keys=KEY)
    client.get("/v1/recommendations/1001", headers={"X-API-Key": KEY})
    client.get("/v1/recommendations/1001", headers={"X-API-Key": KEY + "x"})
    client.get("/metrics")
    assert KEY not in caplog.text
    assert KEY not in client.get("/metrics").text
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_short_keys_are_refused_without_being_shown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as info:
        make_settings(tmp_path, recsys_api_keys=f"{KEY},short-secret")
    assert "1 of 2 keys are shorter than 16" in str(info.value)
    assert "short-secret" not in str(info.value)


def test_no_keys_means_no_auth(client: TestClient) -> None:
    assert client.get("/v1/recommendations/1001").status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_refusals_name_the_snapshot_too(locked: TestClient) -> None:
    response = locked.get("/v1/recommendations/1001")
    assert response.status_code == 401
    assert (
        response.headers["x-snapshot-version"] == locked.get("/readyz").json()["snapshot_version"]
    )
    assert response.headers["x-model-version"] == "fv1_test-catboost-42"
