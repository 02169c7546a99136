"""POST /v1/events: durable landing of valid events, 422 naming the field of a bad one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient

from recsys.ingest import ingest_landing
from recsys.lake import Lake
from tests.unit.api.conftest import metric

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
        "timestamp,visitorid,event,itemid,transactionid\n1442545187123,1,view,5,\n"
    )
    assert not list(new.parent.glob("*.tmp"))  # nothing half-written left behind
    assert metric(client, "recsys_events_accepted_total") == accepted + 1


def test_a_batch_is_one_file(client: TestClient) -> None:
    before = set(landing_files(client))
    response = client.post(URL, json=[VIEW, SALE, {**VIEW, "event": "addtocart"}])
    assert response.status_code == 202 and response.json()["accepted"] == 3
    (new,) = set(landing_files(client)) - before
    assert new.read_text().splitlines()[1:] == [
        "1442545187123,1,view,5,",
        "1442545187123,1,transaction,5,77",
        "1442545187123,1,addtocart,5,",
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
    # a retry after the ingest (the client never saw the 202) lands again; ingest rewrites
    # the same raw part, so the rows are in raw/ once
    assert client.post(URL, json=[VIEW, SALE], headers=key).status_code == 202
    ingest_landing(lake, tmp_path / "work2")
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
