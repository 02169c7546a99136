"""POST /v1/events: durable landing of valid events, 422 naming the field of a bad one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient

from recsys.ingest import ingest_landing
from recsys.lake import Lake
from tests.api_snapshots import default_world
from tests.unit.api.conftest import KEY, metric

URL = "/v1/events"
VIEW = {"timestamp": 1442545187123, "visitorid": 1, "event": "view", "itemid": 5}
SALE = {**VIEW, "event": "transaction", "transactionid": 77}


def landing_files(client: TestClient) -> list[Path]:
    lake: Lake = client.app.state.lake  # type: ignore[attr-defined]
    return sorted((Path(lake.root) / "landing" / "events").glob("*.csv"))


def test_one_event_is_written_before_the_202(client: TestClient) -> None:
    before = set(landing_files(client))
    accepted = metric(client, "recsys_events_accepted_total")
    response = client.post(URL, json=VIEW)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 1
    assert body["snapshot_version"] == response.headers["x-snapshot-version"]
    (new,) = set(landing_files(client)) - before
    assert new.name == f"{body['batch_id']}.csv"
    assert new.read_text() == (
        "timestamp,visitorid,event,itemid,transactionid,impression_id\n1442545187123,1,view,5,,\n"
    )
    assert not list(new.parent.glob("*.tmp"))  # nothing half-written left behind
    assert metric(client, "recsys_events_accepted_total") == accepted + 1


def test_a_batch_is_one_file(client: TestClient) -> None:
    before = set(landing_files(client))
    response = client.post(URL, json=[VIEW, SALE, {**VIEW, "event": "addtocart"}])
    assert response.status_code == 202 and response.json()["accepted"] == 3
    (new,) = set(landing_files(client)) - before
    assert new.read_text().splitlines()[1:] == [
        "1442545187123,1,view,5,,",
        "1442545187123,1,transaction,5,77,",
        "1442545187123,1,addtocart,5,,",
    ]


def test_landed_events_reach_ingest(client_for: Callable[..., TestClient], tmp_path: Path) -> None:
    client = client_for(None)  # events need no snapshot
    assert client.post(URL, json=[VIEW, SALE]).status_code == 202
    report = ingest_landing(client.app.state.lake, tmp_path / "work")  # type: ignore[attr-defined]
    assert report is not None and (report.accepted, report.rejected) == (2, 0)


def test_a_retry_with_the_same_key_lands_once(
    client_for: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = client_for(None)
    lake: Lake = client.app.state.lake  # type: ignore[attr-defined]
    key = {"Idempotency-Key": "order-42:attempt"}
    first = client.post(URL, json=[VIEW, SALE], headers=key)
    again = client.post(URL, json=[VIEW, SALE], headers=key)  # before the next ingest
    assert first.status_code == again.status_code == 202
    assert first.json()["batch_id"] == again.json()["batch_id"]
    assert [p.name for p in landing_files(client)] == [f"{first.json()['batch_id']}.csv"]
    assert not list((Path(lake.root) / "landing" / "events").glob(".*.tmp"))
    report = ingest_landing(lake, tmp_path / "work1")
    assert report is not None and report.accepted == 2
    # a retry after the ingest (the client never saw the 202) is answered without landing
    # anything: the ingested file is the same body
    again = client.post(URL, json=[VIEW, SALE], headers=key)
    assert again.status_code == 202 and again.json()["batch_id"] == first.json()["batch_id"]
    assert landing_files(client) == []
    assert ingest_landing(lake, tmp_path / "work2") is None
    parts = list((Path(lake.root) / "raw" / "events").glob("*.parquet"))
    rows = duckdb.sql(f"select count(*) from read_parquet({[str(p) for p in parts]})")
    assert rows.fetchall() == [(2,)]
    # another key, or none, is another batch
    other = client.post(URL, json=VIEW, headers={"Idempotency-Key": "order-43"})
    plain = client.post(URL, json=VIEW)
    ids = {first.json()["batch_id"], other.json()["batch_id"], plain.json()["batch_id"]}
    assert len(ids) == 3


@pytest.mark.parametrize("key", ["", "a b", "../x", "k" * 129, "a;b"])
def test_a_bad_idempotency_key_is_a_422(client: TestClient, key: str) -> None:
    response = client.post(URL, json=VIEW, headers={"Idempotency-Key": key})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({k: v for k, v in VIEW.items() if k != "itemid"}, ["body", "event", "itemid"]),
        ({**VIEW, "visitorid": "1"}, ["body", "event", "visitorid"]),
        ({**VIEW, "visitorid": -1}, ["body", "event", "visitorid"]),
        ({**VIEW, "itemid": 1.5}, ["body", "event", "itemid"]),
        ({**VIEW, "event": "click"}, ["body", "event", "event"]),
        ({**VIEW, "timestamp": 4_102_444_800_000}, ["body", "event", "timestamp"]),
        ({**VIEW, "transactionid": 5}, ["body", "event", "transactionid"]),
        ({**SALE, "transactionid": None}, ["body", "event", "transactionid"]),
        ({**VIEW, "colour": "red"}, ["body", "event", "colour"]),
        ([VIEW, {**VIEW, "itemid": "x"}], ["body", "events", 1, "itemid"]),
        ([], ["body", "events"]),
        ([VIEW] * 1001, ["body", "events"]),
        ("view", ["body", "event"]),
    ],
)
def test_a_bad_event_is_a_422_naming_the_field(
    client: TestClient, body: object, where: list[object]
) -> None:
    before = landing_files(client)
    response = client.post(URL, json=body)
    assert response.status_code == 422, response.text
    assert where in [error["loc"] for error in response.json()["detail"]]
    assert landing_files(client) == before  # nothing written


def raw_rows(lake: Lake) -> list[tuple[object, ...]]:
    parts = [str(p) for p in (Path(lake.root) / "raw" / "events").glob("*.parquet")]
    if not parts:
        return []
    query = f"select visitorid, itemid, event from read_parquet({parts}) order by all"
    return duckdb.sql(query).fetchall()


def test_another_body_under_a_used_key_is_a_409_before_and_after_ingest(
    client_for: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = client_for(None)
    lake: Lake = client.app.state.lake  # type: ignore[attr-defined]
    key = {"Idempotency-Key": "order-7"}
    assert client.post(URL, json=[VIEW, SALE], headers=key).status_code == 202
    changed = client.post(URL, json=[VIEW], headers=key)
    assert changed.status_code == 409 and "different body" in changed.json()["detail"]
    ingest_landing(lake, tmp_path / "work")
    assert client.post(URL, json=[{**VIEW, "itemid": 6}], headers=key).status_code == 409
    assert landing_files(client) == []
    assert raw_rows(lake) == [(1, 5, "transaction"), (1, 5, "view")]  # the first body, once


OTHER_KEY = "another-valid-key-0123456789"


def test_idempotency_keys_belong_to_their_caller(
    client_for: Callable[..., TestClient], tmp_path: Path
) -> None:
    """A second client using the same Idempotency-Key once replaced the first one's events."""
    client = client_for(default_world(), recsys_api_keys=f"{KEY},{OTHER_KEY}")
    lake: Lake = client.app.state.lake  # type: ignore[attr-defined]
    mine = {"X-API-Key": KEY, "Idempotency-Key": "batch-1"}
    theirs = {"X-API-Key": OTHER_KEY, "Idempotency-Key": "batch-1"}
    first = client.post(URL, json=[VIEW], headers=mine)
    second = client.post(URL, json=[{**VIEW, "visitorid": 2}], headers=theirs)
    assert first.status_code == second.status_code == 202
    assert first.json()["batch_id"] != second.json()["batch_id"]
    assert KEY not in first.json()["batch_id"]
    ingest_landing(lake, tmp_path / "work1")
    # and after the ingest, each caller's retry is its own
    assert client.post(URL, json=[VIEW], headers=mine).status_code == 202
    assert client.post(URL, json=[{**VIEW, "visitorid": 3}], headers=theirs).status_code == 409
    ingest_landing(lake, tmp_path / "work2")
    assert raw_rows(lake) == [(1, 5, "view"), (2, 5, "view")]


def test_events_from_the_future_are_refused(client_for: Callable[..., TestClient]) -> None:
    client = client_for(None, recsys_max_clock_skew_seconds=60)
    now_ms = int(time.time() * 1000)
    assert client.post(URL, json={**VIEW, "timestamp": now_ms + 30_000}).status_code == 202
    for late in (now_ms + 120_000, 4_070_908_800_000):  # two minutes ahead; 2099
        response = client.post(URL, json=[VIEW, {**VIEW, "timestamp": late}])
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "events", 1, "timestamp"]
        assert "later than this server's clock allows (now + 60 s)" in error["msg"]
        response = client.post(URL, json={**VIEW, "timestamp": late})
        assert response.json()["detail"][0]["loc"] == ["body", "event", "timestamp"]
    assert len(landing_files(client)) == 1


def test_a_202_says_whether_a_retry_is_safe_and_flags_a_likely_one(
    client_for: Callable[..., TestClient],
) -> None:
    client = client_for(None)
    keyed = client.post(URL, json=[VIEW], headers={"Idempotency-Key": "k-1"}).json()
    assert keyed["retry_safe"] is True and keyed["note"] is None
    first = client.post(URL, json=[VIEW, SALE]).json()
    assert first["retry_safe"] is False and "Idempotency-Key" in first["note"]
    assert first["possible_duplicate"] is False
    again = client.post(URL, json=[VIEW, SALE]).json()  # a client retrying without a key
    assert again["possible_duplicate"] is True
    assert metric(client, "recsys_events_unkeyed_repeats_total") == 1
    assert client.post(URL, json=[SALE]).json()["possible_duplicate"] is False
    described = client.get("/openapi.json").json()["paths"]["/v1/events"]["post"]["description"]
    assert "Without a key, a retry lands its" in described


def test_recent_batches_forget_after_their_window() -> None:
    from api.events import RecentBatches

    recent = RecentBatches(seconds=10, max_entries=3)
    assert not recent.seen("a", "x", now=0) and recent.seen("a", "x", now=5)
    assert not recent.seen("b", "x", now=6)  # another caller
    assert not recent.seen("a", "x", now=20)  # outside the window
    for n in range(5):
        recent.seen("a", str(n), now=21)
    assert len(recent._seen) <= 3
