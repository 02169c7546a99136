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
    spec = locked.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["APIKeyHeader"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-API-Key")
    # every /v1 operation requires it, and says what a 401 looks like; the probes need nothing
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            if path.startswith("/v1/"):
                assert operation["security"] == [{"APIKeyHeader": []}], path
                assert operation["responses"]["401"]["content"], path
            else:
                assert "security" not in operation, path


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
    # the scheme is still declared (a client generated from a development server knows of
    # auth), as optional: a key, or nothing at all
    spec = client.get("/openapi.json").json()
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]
    operation = spec["paths"]["/v1/recommendations/{visitor_id}"]["get"]
    assert operation["security"] == [{"APIKeyHeader": []}, {}]


def test_refusals_name_the_snapshot_too(locked: TestClient) -> None:
    response = locked.get("/v1/recommendations/1001")
    assert response.status_code == 401
    assert (
        response.headers["x-snapshot-version"] == locked.get("/readyz").json()["snapshot_version"]
    )
    assert response.headers["x-model-version"] == "fv1_test-catboost-42"


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
    client_for: Callable[..., TestClient],
) -> None:
    client = client_for(
        default_world(),
        recsys_api_keys=f"{KEY},{OTHER}",
        recsys_api_rate_limit=0.1,  # a token every 10 s: none comes back during the test
        recsys_api_rate_burst=5,
    )
    greedy, polite = {"X-API-Key": KEY}, {"X-API-Key": OTHER}
    codes = [client.get("/v1/recommendations/1001", headers=greedy).status_code for _ in range(8)]
    assert codes == [200] * 5 + [429] * 3
    refused = client.get("/v1/recommendations/1001", headers=greedy)
    assert refused.status_code == 429 and 5 <= int(refused.headers["retry-after"]) <= 10
    assert "too many requests" in refused.json()["detail"]
    # other keys, and what needs no key, are not held back by it
    assert client.get("/v1/recommendations/1001", headers=polite).status_code == 200
    assert client.get("/healthz").status_code == 200
    # a wrong key is still a 401, never a 429 that would tell it apart
    assert (
        client.get("/v1/recommendations/1001", headers={"X-API-Key": "w" * 20}).status_code == 401
    )


def test_without_keys_v1_answers_on_loopback_only(
    client_for: Callable[..., TestClient],
) -> None:
    """The rule once lived in `recsys serve` only: an app started any other way (uvicorn on
    0.0.0.0, a container) served anyone. `scope["server"]` is the address a request came in on
    (in-process here: no traffic leaves the test)."""
    open_app = client_for(default_world()).app
    for base, allowed in (
        ("http://127.0.0.1:8000", True),
        ("http://[::1]:8000", True),
        ("http://192.0.2.10:8000", False),  # a documentation address, never contacted
        ("http://[2001:db8::1]:8000", False),
    ):
        with TestClient(open_app, base_url=base) as remote:
            response = remote.get("/v1/recommendations/1001")
            assert (response.status_code == 200) is allowed, base
            if not allowed:
                assert response.status_code == 403
                assert "RECSYS_API_KEYS" in response.json()["detail"]
                assert remote.get("/healthz").status_code == 200
    trusting = client_for(default_world(), recsys_api_allow_no_auth=True).app
    with TestClient(trusting, base_url="http://192.0.2.10:8000") as remote:
        assert remote.get("/v1/recommendations/1001").status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_another_host(client: TestClient, page: str) -> None:
    import re

    html = client.get(page)
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:(]\s*['"]?([^'")\s>]+)""", html.text)
    assert urls and not [u for u in urls if "//" in u], urls  # no absolute or protocol URL
    for url in urls:
        if url.startswith("/docs/assets/"):
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1_000, url


def test_a_root_path_does_not_open_the_api(client_for: Callable[..., TestClient]) -> None:
    """Behind `--root-path /api` every path starts with `/api`: the key check once looked for
    `/v1/` at the start of the full path and let everything through."""
    app = client_for(default_world(), recsys_api_keys=KEY).app
    with TestClient(app, root_path="/api") as behind_proxy:
        assert behind_proxy.get("/api/v1/recommendations/1001").status_code == 401
        response = behind_proxy.get("/api/v1/recommendations/1001", headers={"X-API-Key": KEY})
        assert response.status_code == 200
        assert behind_proxy.get("/api/healthz").status_code == 200
    open_app = client_for(default_world()).app
    with TestClient(open_app, root_path="/api", base_url="http://192.0.2.10:8000") as remote:
        assert remote.get("/api/v1/recommendations/1001").status_code == 403


def test_ipv4_clients_of_a_dual_stack_socket_are_local(
    client_for: Callable[..., TestClient],
) -> None:
    app = client_for(default_world()).app
    with TestClient(app, base_url="http://[::ffff:127.0.0.1]:8000") as mapped:
        assert mapped.get("/v1/recommendations/1001").status_code == 200


def test_made_up_methods_share_one_metric_label(client: TestClient) -> None:
    for number in range(5):
        client.request(f"X{number}", "/v1/recommendations/1001")
    text = client.get("/metrics").text
    assert 'method="X0"' not in text and 'method="OTHER"' in text
