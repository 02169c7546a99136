"""The monitoring service (monitoring/service.py) over a temporary local lake: metrics from the
latest export, swaps and refusals, the report, and Alertmanager's webhook."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from monitoring import export, service
from monitoring.metrics_catalog import METRICS, RETRAIN_REASONS
from recsys.lake import Lake
from recsys.settings import Settings
from tests.unit.monitoring.conftest import SNAPSHOT_NEW, SNAPSHOT_OLD

GENERATED = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
TOKEN = "t0ken-for-the-webhook-0123456789"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Series:
    """Every sample of /metrics by (name, sorted labels)."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    series: Series = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, tuple(sorted(labels.items())))]


def names_with(series: Series, name: str) -> set[tuple[tuple[str, str], ...]]:
    return {labels for (n, labels) in series if n == name}


@pytest.fixture
def clock() -> Clock:
    return Clock(GENERATED.timestamp() + 60)  # a minute after the export was made


@pytest.fixture
def start(
    mon_settings: Settings, mon_lake: Lake, clock: Clock
) -> Iterator[Callable[..., TestClient]]:
    """Start an app (lifespan included: the first load happens) over the test lake."""
    clients: list[TestClient] = []

    def make(settings: Settings | None = None, **options: Any) -> TestClient:
        app = service.create_app(settings or mon_settings, lake=mon_lake, clock=clock, **options)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def refresh(client: TestClient) -> bool:
    app: FastAPI = client.app  # type: ignore[assignment]
    return bool(app.state.exports.refresh())


def write(lake: Lake, report: dict[str, Any], **files: bytes) -> str:
    return export.write_export(lake, report, files, now=GENERATED)


def test_metrics_of_an_export(
    start: Callable[..., TestClient], mon_lake: Lake, report: dict[str, Any], clock: Clock
) -> None:
    export_id = write(mon_lake, report)
    client = start()
    assert client.get("/readyz").json()["export_id"] == export_id
    series = scrape(client)

    # drift: features, mixes, overall (0 ok, 1 warn, 2 fail)
    assert value(series, "recsys_drift_psi", feature="price", kind="numeric") == 0.12
    assert value(series, "recsys_drift_ks", feature="price") == 0.08
    assert value(series, "recsys_drift_status", feature="price", kind="numeric") == 1
    assert value(series, "recsys_drift_status", feature="top_category", kind="categorical") == 2
    assert value(series, "recsys_drift_psi", feature="event_mix", kind="mix") == 0.02
    assert value(series, "recsys_drift_status", feature="categories", kind="mix") == 1
    assert value(series, "recsys_drift_overall_status") == 1
    assert (("feature", "top_category"),) not in names_with(series, "recsys_drift_ks")
    # live performance: each snapshot's latest day; the ratio to its offline figure
    assert value(series, "recsys_live_ndcg_at_10", snapshot_version=SNAPSHOT_NEW) == 0.24
    assert value(series, "recsys_live_recall_at_20", snapshot_version=SNAPSHOT_NEW) == 0.35
    assert value(series, "recsys_live_visitors", snapshot_version=SNAPSHOT_NEW) == 250
    assert value(series, "recsys_offline_ndcg_at_10", snapshot_version=SNAPSHOT_NEW) == 0.3
    ratio = value(series, "recsys_live_ndcg_ratio", snapshot_version=SNAPSHOT_NEW)
    assert ratio == pytest.approx(0.8)
    assert value(series, "recsys_live_ndcg_at_10", snapshot_version=SNAPSHOT_OLD) == 0.2
    assert math.isnan(value(series, "recsys_live_ndcg_ratio", snapshot_version=SNAPSHOT_OLD))
    # freshness: as measured plus the minute since the export
    assert value(series, "recsys_events_lag_seconds") == 660
    assert value(series, "recsys_published_snapshot_age_seconds") == 172860
    assert value(series, "recsys_event_volume_ratio") == 0.9
    # business
    assert value(series, "recsys_business_ctr") == 0.05
    assert value(series, "recsys_business_conversion_rate") == 0.02
    assert value(series, "recsys_business_revenue") == 1234.5
    assert (
        value(series, "recsys_business_day_timestamp_seconds")
        == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    )
    # the decision: 1 per reason given, 0 for the others
    assert value(series, "recsys_retrain_decision") == 1
    assert {
        reason: value(series, "recsys_retrain_reason", reason=reason) for reason in RETRAIN_REASONS
    } == {"drift": 1, "live_ndcg_decay": 0, "stale_snapshot": 0, "weekly": 1}
    assert value(series, "recsys_retrain_decided_timestamp_seconds") == GENERATED.timestamp()
    assert value(series, "recsys_monitoring_export_timestamp_seconds") == GENERATED.timestamp()
    assert value(series, "recsys_monitoring_export_loads_total") == 1
    assert value(series, "recsys_monitoring_export_load_failures_total", reason="invalid") == 0

    # lag and age keep growing while no new export comes
    clock.now += 3600
    later = scrape(client)
    assert value(later, "recsys_events_lag_seconds") == 4260
    assert value(later, "recsys_published_snapshot_age_seconds") == 176460


def test_metrics_are_the_catalog(
    start: Callable[..., TestClient], mon_lake: Lake, report: dict[str, Any]
) -> None:
    """Every catalog metric is exposed with its type and help, and nothing else is."""
    write(mon_lake, report)
    text = start().get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for spec in METRICS:
        name = spec.name.removesuffix("_total") if spec.type == "counter" else spec.name
        assert name in families, spec.name
        assert families[name].type == spec.type
        assert families[name].documentation == spec.help
        for sample in families[name].samples:
            assert set(sample.labels) == set(spec.labels), spec.name
    exposed = {s.name for f in families.values() for s in f.samples}
    assert exposed <= {spec.name for spec in METRICS}


def test_before_any_export(start: Callable[..., TestClient]) -> None:
    client = start()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "no monitoring export" in ready.json()["detail"]
    for path in ("/v1/monitoring", "/v1/report", "/v1/report/monitoring_drift.png"):
        answer = client.get(path)
        assert answer.status_code == 404 and "no monitoring export" in answer.json()["detail"]
    series = scrape(client)
    assert math.isnan(value(series, "recsys_monitoring_export_timestamp_seconds"))
    assert math.isnan(value(series, "recsys_drift_overall_status"))
    assert names_with(series, "recsys_drift_psi") == set()
    assert value(series, "recsys_monitoring_export_loads_total") == 0


def test_a_new_export_replaces_the_gauges(
    start: Callable[..., TestClient], mon_lake: Lake, report: dict[str, Any]
) -> None:
    write(mon_lake, report)
    client = start()
    assert ("feature", "price") in {
        pair for labels in names_with(scrape(client), "recsys_drift_psi") for pair in labels
    }
    del report["drift"]["features"]["price"]
    report["drift"]["event_mix"] = None
    report["business"]["ctr"] = None
    report["retrain"] = {"decision": False, "reasons": [], "decided_at": GENERATED}
    second = write(mon_lake, report)
    assert refresh(client)
    assert client.get("/readyz").json()["export_id"] == second
    series = scrape(client)
    features = {dict(labels)["feature"] for labels in names_with(series, "recsys_drift_psi")}
    assert features == {"n_views", "top_category", "categories"}
    assert names_with(series, "recsys_drift_ks") == {(("feature", "n_views"),)}
    assert math.isnan(value(series, "recsys_business_ctr"))
    assert value(series, "recsys_retrain_decision") == 0
    assert all(value(series, "recsys_retrain_reason", reason=r) == 0 for r in RETRAIN_REASONS)
    assert value(series, "recsys_monitoring_export_loads_total") == 2
    assert not refresh(client)  # LATEST unchanged: nothing loaded again


def test_untrusted_label_values_are_dropped(
    start: Callable[..., TestClient], mon_lake: Lake, report: dict[str, Any]
) -> None:
    bad = {"kind": "numeric", "psi": 0.5, "ks": 0.5, "status": "fail"}
    report["drift"]["features"]['x"} 1\nevil{a="'] = bad
    report["drift"]["features"]["y" * 65] = bad
    report["live_performance"].append(
        {"snapshot_version": "../../etc", "day": 3, "ndcg@10": 0.1, "recall@20": 0.1}
    )
    report["offline"]["not-a-version"] = {"ndcg@10": 0.5}
    report["retrain"]["reasons"].append("Drift Because!")
    write(mon_lake, report)
    series = scrape(start())
    features = {dict(labels)["feature"] for labels in names_with(series, "recsys_drift_psi")}
    assert features == {"price", "n_views", "top_category", "event_mix", "categories"}
    versions = {
        dict(labels)["snapshot_version"] for labels in names_with(series, "recsys_live_ndcg_at_10")
    }
    assert versions == {SNAPSHOT_OLD, SNAPSHOT_NEW}
    assert names_with(series, "recsys_offline_ndcg_at_10") == {
        (("snapshot_version", SNAPSHOT_NEW),),
        (("snapshot_version", SNAPSHOT_OLD),),
    }
    assert {
        dict(labels)["reason"] for labels in names_with(series, "recsys_retrain_reason")
    } == set(RETRAIN_REASONS)


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda lake, eid: lake.write_text(export.LATEST, "../../etc"), "latest"),
        (
            lambda lake, eid: lake.write_text(
                f"monitoring/exports/{eid}/monitoring.json", '{"drift": {"status": "bad"}}'
            ),
            "invalid",
        ),
        (
            lambda lake, eid: lake.write_text(
                f"monitoring/exports/{eid}/monitoring.json", "{truncated"
            ),
            "invalid",
        ),
        (lambda lake, eid: lake.remove(f"monitoring/exports/{eid}/monitoring.json"), "missing"),
    ],
    ids=["latest-escapes", "bad-status", "not-json", "missing"],
)
def test_a_bad_export_keeps_the_last_good_one(
    start: Callable[..., TestClient],
    mon_lake: Lake,
    report: dict[str, Any],
    spoil: Callable[[Lake, str], None],
    reason: str,
) -> None:
    good = write(mon_lake, report)
    client = start()
    bad = write(mon_lake, {**report, "business": {"ctr": 0.99}})
    spoil(mon_lake, bad)
    assert not refresh(client)
    assert not refresh(client)  # the same refusal: not counted twice
    assert client.get("/readyz").json()["export_id"] == good
    assert client.get("/v1/monitoring").json()["business"]["ctr"] == 0.05
    series = scrape(client)
    assert value(series, "recsys_monitoring_export_load_failures_total", reason=reason) == 1
    assert value(series, "recsys_business_ctr") == 0.05
    # a good export afterwards is taken
    third = write(mon_lake, report)
    assert refresh(client)
    assert client.get("/readyz").json()["export_id"] == third


def test_a_lake_error_is_retried_and_counted_each_time(
    start: Callable[..., TestClient],
    mon_lake: Lake,
    report: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(mon_lake, report)
    client = start()

    def down(lake: Lake) -> str:
        raise export.ExportError("lake", "the lake could not be accessed")

    monkeypatch.setattr(export, "read_latest_id", down)
    refresh(client)
    refresh(client)
    assert client.get("/readyz").status_code == 200
    series = scrape(client)
    assert value(series, "recsys_monitoring_export_load_failures_total", reason="lake") == 2


def test_the_poller_picks_up_a_new_export(
    start: Callable[..., TestClient], mon_lake: Lake, report: dict[str, Any]
) -> None:
    client = start(poll_seconds=0.05)
    assert client.get("/readyz").status_code == 503
    export_id = write(mon_lake, report)
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the poller did not load the export"
        time.sleep(0.02)
    assert client.get("/readyz").json()["export_id"] == export_id


def test_monitoring_json(
    start: Callable[..., TestClient], mon_lake: Lake, report: dict[str, Any]
) -> None:
    export_id = write(mon_lake, report)
    answer = start().get("/v1/monitoring")
    assert answer.status_code == 200
    assert answer.headers["x-monitoring-export"] == export_id
    body = answer.json()
    assert body["export_id"] == export_id
    assert body["live_performance"][2]["ndcg@10"] == 0.24
    assert body["drift"]["features"]["top_category"]["status"] == "fail"
    assert body["retrain"]["reasons"] == ["drift", "weekly"]
    assert "a_key_from_a_newer_writer" not in body


def test_the_report_and_its_images(
    start: Callable[..., TestClient], mon_lake: Lake, report: dict[str, Any]
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 32
    write(mon_lake, report, **{"report.html": b"<html><p>report</p></html>", "drift.png": png})
    client = start()
    page = client.get("/v1/report")
    assert page.status_code == 200 and page.content == b"<html><p>report</p></html>"
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none'
    assert "sandbox" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    image = client.get("/v1/report/drift.png")
    assert image.status_code == 200 and image.content == png
    assert image.headers["content-type"] == "image/png"
    missing = client.get("/v1/report/absent.png")
    assert missing.status_code == 404 and "absent.png" in missing.json()["detail"]
    for name in ("..%2Fx.png", "..%2F..%2Fmonitoring.json", "X.PNG", ".png", "monitoring.json"):
        refused = client.get(f"/v1/report/{name}")
        assert refused.status_code in (404, 422), name
        if refused.status_code == 422:
            assert refused.json()["detail"][0]["loc"] == ["path", "name"]
    assert client.get("/v1/report/../x.png").status_code == 404  # the client resolves the ..


def test_a_report_missing_from_the_export(
    start: Callable[..., TestClient], mon_lake: Lake, report: dict[str, Any]
) -> None:
    write(mon_lake, report)
    answer = start().get("/v1/report")
    assert answer.status_code == 404 and "report.html" in answer.json()["detail"]


def notification(status: str = "firing", alertname: str = "RecsysDriftFailing") -> dict[str, Any]:
    """A notification as Alertmanager 0.28 posts it."""
    return {
        "receiver": "recsys-monitoring",
        "status": status,
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": alertname, "severity": "critical", "feature": "price"},
                "annotations": {"summary": "drift fails", "description": "PSI 0.3 > 0.25"},
                "startsAt": "2026-12-02T12:00:00.123456789Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=recsys_drift_status",
                "fingerprint": "c4f0a2c1d3e4b5a6",
            }
        ],
        "groupLabels": {"alertname": alertname},
        "commonLabels": {"alertname": alertname, "severity": "critical"},
        "commonAnnotations": {"summary": "drift fails"},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}:{alertname="' + alertname + '"}',
        "truncatedAlerts": 0,
    }


def recorded(client: TestClient, lake: Lake) -> list[dict[str, Any]]:
    app: FastAPI = client.app  # type: ignore[assignment]
    assert app.state.alert_recorder.drain(10)
    return [json.loads(lake.read_text(p)) for p in lake.glob("monitoring/alerts/*/*.json")]


def test_alerts_are_recorded_counted_and_listed(
    start: Callable[..., TestClient], mon_lake: Lake
) -> None:
    client = start()
    first = client.post("/v1/alerts", json=notification("firing"))
    assert first.status_code == 200 and first.json() == {"status": "ok", "alerts": 1}
    second = client.post("/v1/alerts", json=notification("resolved"))
    assert second.status_code == 200
    files = recorded(client, mon_lake)
    assert len(files) == 2
    assert {f["status"] for f in files} == {"firing", "resolved"}
    assert all(f["receiver"] == "recsys-monitoring" and "receivedAt" in f for f in files)
    assert files[0]["alerts"][0]["labels"]["feature"] == "price"
    # filed under the day the service's clock says they came
    assert {p.split("/")[2] for p in mon_lake.glob("monitoring/alerts/*/*.json")} == {"2026-12-02"}
    series = scrape(client)
    for status in ("firing", "resolved"):
        assert (
            value(
                series,
                "recsys_monitoring_alerts_received_total",
                alertname="RecsysDriftFailing",
                status=status,
            )
            == 1
        )
    listed = client.get("/v1/alerts").json()["alerts"]
    assert [a["status"] for a in listed] == ["resolved", "firing"]  # newest first
    assert listed[0]["alertname"] == "RecsysDriftFailing"
    assert listed[0]["annotations"]["summary"] == "drift fails"
    assert len(client.get("/v1/alerts?limit=1").json()["alerts"]) == 1
    for limit in ("0", "100000", "x"):
        answer = client.get(f"/v1/alerts?limit={limit}")
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == [
            "query",
            "limit",
        ]


def test_alertname_labels_are_bounded(start: Callable[..., TestClient]) -> None:
    client = start()
    assert client.post("/v1/alerts", json=notification(alertname='evil"}\n1')).status_code == 200
    series = scrape(client)
    assert (
        value(series, "recsys_monitoring_alerts_received_total", alertname="other", status="firing")
        == 1
    )


def test_a_lake_that_fails_does_not_fail_the_webhook(
    start: Callable[..., TestClient], mon_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> str:
        raise OSError("the lake is down")

    monkeypatch.setattr(export, "record_alert", broken)
    client = start()
    assert client.post("/v1/alerts", json=notification()).status_code == 200
    app: FastAPI = client.app  # type: ignore[assignment]
    assert app.state.alert_recorder.drain(10)
    assert app.state.alert_recorder.failed == 1
    assert mon_lake.glob("monitoring/alerts/*/*.json") == []
    series = scrape(client)
    assert (
        value(
            series,
            "recsys_monitoring_alerts_received_total",
            alertname="RecsysDriftFailing",
            status="firing",
        )
        == 1
    )
    assert len(client.get("/v1/alerts").json()["alerts"]) == 1


def test_the_webhook_token(
    start: Callable[..., TestClient], mon_settings: Settings, mon_lake: Lake
) -> None:
    settings = mon_settings.model_copy(update={"recsys_monitoring_webhook_token": SecretStr(TOKEN)})
    client = start(settings)
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        answer = client.post("/v1/alerts", json=notification(), headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == "Bearer"
    # checked before the body: a stranger learns nothing from a 413 or 422
    assert client.post("/v1/alerts", content=b"{").status_code == 401
    ok = client.post(
        "/v1/alerts", json=notification(), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ok.status_code == 200
    assert len(recorded(client, mon_lake)) == 1
    # the other routes stay open (Prometheus scrapes without the token)
    assert client.get("/metrics").status_code == 200


def test_oversize_bodies_are_413(start: Callable[..., TestClient]) -> None:
    client = start(max_body_bytes=2_000)
    big = notification()
    big["commonAnnotations"]["description"] = "x" * 3_000
    assert client.post("/v1/alerts", json=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # streamed: no Content-Length to check first
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 500):
            yield payload[i : i + 500]

    answer = client.post("/v1/alerts", content=chunks())
    assert answer.status_code == 413
    assert client.get("/v1/alerts").json()["alerts"] == []


def _without(key: str) -> dict[str, Any]:
    body = notification()
    del body[key]
    return body


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b"", ["body"]),
        (b"{not json", ["body"]),
        (b"\xff\xfe", ["body"]),
        (b"[]", ["body"]),
        (json.dumps({**notification(), "version": "3"}).encode(), ["body", "version"]),
        (json.dumps(_without("receiver")).encode(), ["body", "receiver"]),
        (json.dumps({**notification(), "status": "burning"}).encode(), ["body", "status"]),
        (
            json.dumps(
                {**notification(), "alerts": [{"status": "firing", "labels": {"a": 1}}]}
            ).encode(),
            ["body", "alerts", 0, "labels", "a"],
        ),
        (
            json.dumps({**notification(), "alerts": [{"status": "firing"}] * 1_001}).encode(),
            ["body", "alerts"],
        ),
        (
            json.dumps({**notification(), "commonLabels": {"k": "v" * 2_000}}).encode(),
            ["body", "commonLabels", "k"],
        ),
    ],
    ids=[
        "empty",
        "not-json",
        "not-utf8",
        "not-an-object",
        "version",
        "receiver",
        "status",
        "label-not-text",
        "too-many-alerts",
        "label-too-long",
    ],
)
def test_malformed_notifications_are_422(
    start: Callable[..., TestClient], body: bytes, loc: list[Any]
) -> None:
    client = start()
    answer = client.post("/v1/alerts", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == loc
    assert "input" not in detail[0]
    assert client.get("/v1/alerts").json()["alerts"] == []
