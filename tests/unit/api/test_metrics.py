"""/metrics: Prometheus text, labelled by route template, one registry per app."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.api.conftest import metric

HISTOGRAM = "recsys_http_request_duration_seconds"


def test_metrics_are_served_without_a_redirect(client: TestClient) -> None:
    response = client.get("/metrics", follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "recsys_http_request_duration_seconds",
        "recsys_recommendations",
        "recsys_cache_hits",
        "recsys_cache_misses",
        "recsys_snapshot_age_seconds",
        "recsys_snapshot_info",
        "recsys_snapshot_swaps",
        "recsys_snapshot_swap_failures",
        "recsys_events_accepted",
        "process_resident_memory_bytes",
    } <= names


def test_durations_are_labelled_by_route_template_and_status(client: TestClient) -> None:
    route = "/v1/recommendations/{visitor_id}"
    ok = metric(client, f"{HISTOGRAM}_count", method="GET", route=route, status="200")
    bad = metric(client, f"{HISTOGRAM}_count", method="GET", route=route, status="422")
    client.get("/v1/recommendations/424242")
    client.get("/v1/recommendations/1001?k=2")
    client.get("/v1/recommendations/1001?k=0")
    client.get("/no/such/path/123")
    assert metric(client, f"{HISTOGRAM}_count", method="GET", route=route, status="200") == ok + 2
    assert metric(client, f"{HISTOGRAM}_count", method="GET", route=route, status="422") == bad + 1
    unmatched = metric(client, f"{HISTOGRAM}_count", method="GET", route="unmatched", status="404")
    assert unmatched >= 1
    text = client.get("/metrics").text
    assert "424242" not in text and "/no/such/path" not in text  # raw paths never become labels


def test_answers_are_counted_by_strategy(client: TestClient) -> None:
    counts = {
        s: metric(client, "recsys_recommendations_total", route="visitor", strategy=s)
        for s in ("personalized", "session", "popular")
    }
    client.get("/v1/recommendations/1001")
    client.get("/v1/recommendations/2001")
    client.get("/v1/recommendations/777")
    client.get("/v1/recommendations/778")
    for strategy, more in (("personalized", 1), ("session", 1), ("popular", 2)):
        now = metric(client, "recsys_recommendations_total", route="visitor", strategy=strategy)
        assert now == counts[strategy] + more
    before = metric(client, "recsys_recommendations_total", route="session", strategy="session")
    client.post("/v1/recommendations", json={"session_item_ids": [3]})
    after = metric(client, "recsys_recommendations_total", route="session", strategy="session")
    assert after == before + 1
    before = metric(client, "recsys_recommendations_total", route="similar", strategy="similar")
    client.get("/v1/items/3/similar")
    after = metric(client, "recsys_recommendations_total", route="similar", strategy="similar")
    assert after == before + 1


def test_each_app_has_its_own_registry(client: TestClient, client_for) -> None:  # type: ignore[no-untyped-def]
    other = client_for(None)
    assert metric(other, "recsys_snapshot_swaps_total") == 0
    assert metric(client, "recsys_snapshot_swaps_total") >= 1
