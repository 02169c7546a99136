"""What a browser, a cache and a slow network need of the API: CORS (preflights answered before
the key check), ETag / If-None-Match / Cache-Control on the GET answers, gzip above a size."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.api_snapshots import default_world
from tests.unit.api.conftest import KEY

SHOP = "https://shop.example"


@pytest.fixture
def cors_client(client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(
        default_world(),
        recsys_api_keys=KEY,
        recsys_api_cors_origins=f"{SHOP}, http://localhost:3000",
    )


def test_a_preflight_is_answered_before_the_key_check(cors_client: TestClient) -> None:
    preflight = cors_client.options(
        "/v1/recommendations/1001",
        headers={
            "Origin": SHOP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    assert preflight.status_code == 200, preflight.text  # never a 401: it carries no key
    assert preflight.headers["access-control-allow-origin"] == SHOP
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
    assert "GET" in preflight.headers["access-control-allow-methods"]
    # the real request still needs its key, and then tells the page what it may read
    assert cors_client.get("/v1/recommendations/1001", headers={"Origin": SHOP}).status_code == 401
    answer = cors_client.get("/v1/recommendations/1001", headers={"Origin": SHOP, "X-API-Key": KEY})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == SHOP
    exposed = answer.headers["access-control-expose-headers"].lower()
    assert {"x-snapshot-version", "etag", "retry-after"} <= set(exposed.replace(" ", "").split(","))


def test_other_origins_get_no_cors_headers(cors_client: TestClient) -> None:
    preflight = cors_client.options(
        "/v1/recommendations/1001",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    answer = cors_client.get(
        "/v1/recommendations/1001", headers={"Origin": "https://evil.example", "X-API-Key": KEY}
    )
    assert "access-control-allow-origin" not in answer.headers


def test_without_origins_set_there_is_no_cors(client: TestClient) -> None:
    answer = client.get("/v1/recommendations/1001", headers={"Origin": SHOP})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


def test_unsafe_origins_are_refused() -> None:
    from pydantic import ValidationError

    from recsys.settings import Settings

    for wrong in ("https://shop.example/path", "shop.example", "https://shop.example, ftp://x"):
        with pytest.raises(ValidationError, match="RECSYS_API_CORS_ORIGINS"):
            Settings(recsys_api_cors_origins=wrong, _env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "path", ["/v1/recommendations/1001?k=5", "/v1/items/1/similar?k=5"], ids=["visitor", "similar"]
)
def test_an_unchanged_answer_is_a_304(client: TestClient, path: str) -> None:
    first = client.get(path)
    assert first.status_code == 200
    tag = first.headers["etag"]
    # weak: two answers to one request differ in their impression id, not in their list
    assert tag.startswith('W/"') and first.headers["x-snapshot-version"] in tag
    assert first.headers["cache-control"] == "private, no-cache"
    again = client.get(path, headers={"If-None-Match": tag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == tag
    # a list of tags matches too, the tag with or without its weak prefix; another request
    # has another tag
    assert client.get(path, headers={"If-None-Match": f'"x", {tag}'}).status_code == 304
    opaque = tag.removeprefix("W/")
    assert client.get(path, headers={"If-None-Match": f'"x", {opaque}'}).status_code == 304
    other = client.get(path.replace("k=5", "k=6"))
    assert other.headers["etag"] != tag
    assert client.get(path.replace("k=5", "k=6"), headers={"If-None-Match": tag}).status_code == 200


def test_a_ranked_answer_is_never_stored(client: TestClient) -> None:
    answer = client.post("/v1/recommendations", json={"visitor_id": 1001, "k": 5})
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    assert "etag" not in answer.headers


def test_large_answers_are_gzipped_for_clients_that_accept_it(client: TestClient) -> None:
    path = "/v1/recommendations/1001?k=50"
    plain = client.get(path, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert len(plain.content) >= 1_400  # over the default threshold
    zipped = client.get(path, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["vary"] == "Accept-Encoding"
    assert zipped.num_bytes_downloaded < len(plain.content) / 2
    # httpx decoded it: the same answer (each answer is an impression of its own)
    assert zipped.json() == {**plain.json(), "impression_id": zipped.json()["impression_id"]}
    # a refusal is honoured, and a small answer is not worth compressing
    refused = client.get(path, headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    small = client.get("/v1/recommendations/1001?k=1", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
