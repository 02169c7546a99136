"""Every recommendation answer is an impression: its id in the answer, its record on the lake.

The log is bounded and never fails a request: a full buffer drops and counts, an unwritable lake
keeps what it can for the next attempt (api.impressions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.impressions import LANDING_DIR, ImpressionIds
from recsys.lake import Lake
from recsys.settings import Settings
from tests.api_snapshots import default_world

HEX32 = re.compile(r"[0-9a-f]{32}")


def landed(data_dir: Path) -> list[dict[str, Any]]:
    """Every impression line the app wrote, oldest file first."""
    folder = data_dir / "lake" / LANDING_DIR
    lines = []
    for path in sorted(folder.glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def metric(client: TestClient, name: str) -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def test_ids_are_unique_hex() -> None:
    ids = ImpressionIds()
    made = {ids.new() for _ in range(10_000)}
    assert len(made) == 10_000
    assert all(HEX32.fullmatch(i) for i in made)
    assert ImpressionIds().new()[:16] != ids.new()[:16]  # another process, another prefix


def test_every_answer_is_logged_as_shown(
    client_for: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = client_for(default_world())
    answers = [
        ("visitor", client.get("/v1/recommendations/1001?k=5")),
        ("visitor", client.get("/v1/recommendations/999999?k=3")),  # unknown: popular
        ("visitor", client.get("/v1/recommendations/1001?k=5")),  # from the answer cache
        (
            "session",
            client.post("/v1/recommendations", json={"visitor_id": 1001, "k": 4}),
        ),
        ("session", client.post("/v1/recommendations", json={"session_item_ids": [3], "k": 4})),
        ("similar", client.get("/v1/items/3/similar?k=4")),
    ]
    for _, response in answers:
        assert response.status_code == 200
        body = response.json()
        assert HEX32.fullmatch(body["impression_id"])
        assert response.headers["x-impression-id"] == body["impression_id"]
        assert body["experiment"] is None and body["variant"] is None
    ids = [r.json()["impression_id"] for _, r in answers]
    assert len(set(ids)) == len(ids)  # a cached answer is a new impression all the same
    client.__exit__(None, None, None)  # shutdown writes what is buffered

    records = {r["impression_id"]: r for r in landed(tmp_path / "data0")}
    assert set(records) == set(ids)
    for route, response in answers:
        body = response.json()
        record = records[body["impression_id"]]
        assert record["route"] == route
        assert record["strategy"] == body["strategy"]
        assert record["policy"] == "ranker"
        assert record["experiment"] is None and record["variant"] is None
        assert record["snapshot_version"] == body["snapshot_version"]
        assert record["model_version"] == body["model_version"]
        assert [(i["item_id"], i["rank"], i["source"]) for i in record["items"]] == [
            (i["item_id"], i["rank"], i["source"]) for i in body["items"]
        ]
        assert all(i["team"] is None for i in record["items"])
        assert isinstance(record["served_at"], int)
    visitor_ids = [records[r.json()["impression_id"]]["visitor_id"] for _, r in answers]
    assert visitor_ids == [1001, 999999, 1001, 1001, None, None]
    assert records[ids[-1]]["anchor_item_id"] == 3


def test_full_buffer_drops_and_counts_never_fails(
    client_for: Callable[..., TestClient], tmp_path: Path
) -> None:
    # two impressions fit; nothing is written before shutdown (an hour between flushes)
    client = client_for(
        default_world(), recsys_impressions_buffer=2, recsys_impressions_flush_seconds=3600
    )
    for _ in range(5):
        assert client.get("/v1/recommendations/1001?k=3").status_code == 200
    assert metric(client, "recsys_impressions_dropped_total") == 3
    assert metric(client, "recsys_impressions_logged_total") == 2
    client.__exit__(None, None, None)
    assert len(landed(tmp_path / "data0")) == 2


def test_an_unwritable_lake_fails_no_request(
    client_for: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = client_for(default_world(), recsys_impressions_flush_seconds=3600)
    blocker = tmp_path / "data0" / "lake" / LANDING_DIR
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the folder should be")  # every write now fails
    for _ in range(3):
        assert client.get("/v1/recommendations/1001?k=3").status_code == 200
    log = client.app.state.impressions  # type: ignore[attr-defined]
    assert log.flush() == 0
    assert metric(client, "recsys_impression_write_failures_total") == 1
    assert metric(client, "recsys_impressions_dropped_total") == 0  # kept for the next try
    blocker.unlink()
    assert log.flush() == 3
    assert metric(client, "recsys_impressions_written_total") == 3


def test_logging_off_still_gives_ids(client_for: Callable[..., TestClient], tmp_path: Path) -> None:
    client = client_for(default_world(), recsys_impressions_log=False)
    response = client.get("/v1/recommendations/1001?k=3")
    assert HEX32.fullmatch(response.json()["impression_id"])
    client.__exit__(None, None, None)
    assert landed(tmp_path / "data0") == []


def test_events_keep_their_impression_id(client_for: Callable[..., TestClient]) -> None:
    client = client_for(default_world())
    impression = client.get("/v1/recommendations/1001?k=3").json()["impression_id"]
    event = {"timestamp": 1442004589439, "visitorid": 1001, "event": "view", "itemid": 1}
    response = client.post("/v1/events", json=[{**event, "impression_id": impression}, event])
    assert response.status_code == 202
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    lake = Lake.from_settings(settings)
    (rel,) = lake.glob("landing/events/*.csv")
    header, first, second = lake.read_text(rel).splitlines()
    assert header == "timestamp,visitorid,event,itemid,transactionid,impression_id"
    assert first.endswith(f",{impression}") and second.endswith(",")
    for wrong in ("ABC", "g" * 32, impression.upper(), 5):
        bad = client.post("/v1/events", json={**event, "impression_id": wrong})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"][-1] == "impression_id"


def test_revalidation_is_an_impression_too(client_for: Callable[..., TestClient]) -> None:
    client = client_for(default_world())
    first = client.get("/v1/recommendations/1001?k=3")
    tag = first.headers["etag"]
    assert tag.startswith('W/"')  # answers differ in their impression id only
    again = client.get("/v1/recommendations/1001?k=3", headers={"If-None-Match": tag})
    assert again.status_code == 304
    assert HEX32.fullmatch(again.headers["x-impression-id"])
    assert again.headers["x-impression-id"] != first.json()["impression_id"]
