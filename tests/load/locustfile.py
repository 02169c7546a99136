"""Realistic traffic for the API: `locust -f tests/load/locustfile.py --host http://127.0.0.1:8000`.

Who calls (weights): returning visitors with a published list (GET, now and then with a
category or excluded items), visitors the model does not know (GET, popular items), shoppers
in a session (POST with the items they just viewed, ranked at request time), product pages
(similar items) and the shop's event feed (POST /v1/events, small batches).

Ids come from the snapshot the service serves: `RECSYS_LOAD_SNAPSHOT` (a snapshot.duckdb
file), else the lake's `LATEST` (`RECSYS_LAKE_URI` / `RECSYS_DATA_DIR`, as the service reads
it), downloaded to a temporary folder. `RECSYS_API_KEY` is sent as `X-API-Key` when set.
The events are real: they land in the lake and the next `recsys ingest` takes them in (they
are views of sampled items at the current time); `RECSYS_LOAD_EVENTS=0` leaves them out.

Headless, e.g.: `locust -f tests/load/locustfile.py --headless -u 50 -r 10 -t 1m --host ...`.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
from locust import HttpUser, between, events, task

IDS: dict[str, list[int]] = {}


def _snapshot_file() -> Path:
    given = os.environ.get("RECSYS_LOAD_SNAPSHOT")
    if given:
        return Path(given)
    from recsys.lake import Lake
    from recsys.settings import get_settings
    from recsys.snapshots import latest_version

    lake = Lake.from_settings(get_settings())
    version = latest_version(lake)
    if version is None:
        raise RuntimeError(f"no snapshot in {lake.uri}: set RECSYS_LOAD_SNAPSHOT or publish one")
    local = Path(tempfile.mkdtemp()) / "snapshot.duckdb"
    lake.get(f"snapshots/{version}/snapshot.duckdb", local)
    return local


def _column(con: duckdb.DuckDBPyConnection, sql: str) -> list[int]:
    return [int(row[0]) for row in con.execute(sql).fetchall()]


@events.init.add_listener
def load_ids(environment: Any, **_kwargs: Any) -> None:
    """Sample ids once per process, before any user starts."""
    with duckdb.connect(str(_snapshot_file()), read_only=True) as con:
        IDS["known"] = _column(
            con, "select distinct visitor_id from recommendations using sample 5000 rows"
        )
        IDS["items"] = _column(
            con, "select distinct item_id from similar_items using sample 5000 rows"
        )
        IDS["categories"] = _column(
            con, "select distinct category_id from popular_items where category_id is not null"
        )
        top = con.execute("select max(visitor_id) from visitors").fetchall()[0][0]
    IDS["unknown_base"] = [int(top or 0) + 1]
    for name in ("known", "items"):
        if not IDS[name]:
            raise RuntimeError(f"the snapshot has no {name} ids to send")


class Shopper(HttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        key = os.environ.get("RECSYS_API_KEY")
        if key:
            self.client.headers["X-API-Key"] = key

    @task(50)
    def returning_visitor(self) -> None:
        visitor = random.choice(IDS["known"])
        params: dict[str, Any] = {"k": random.choice((5, 10, 20))}
        roll = random.random()
        if roll < 0.1 and IDS["categories"]:
            params["category_id"] = random.choice(IDS["categories"])
        elif roll < 0.2:
            params["exclude"] = ",".join(map(str, random.sample(IDS["items"], 3)))
        self.client.get(
            f"/v1/recommendations/{visitor}", params=params, name="/v1/recommendations/{id}"
        )

    @task(20)
    def new_visitor(self) -> None:
        visitor = IDS["unknown_base"][0] + random.randrange(10_000_000)
        self.client.get(f"/v1/recommendations/{visitor}", name="/v1/recommendations/{id} (new)")

    @task(15)
    def session(self) -> None:
        known = random.random() < 0.5
        body = {
            "visitor_id": random.choice(IDS["known"]) if known else None,
            "session_item_ids": random.sample(IDS["items"], random.randint(1, 5)),
            "k": 10,
        }
        self.client.post("/v1/recommendations", json=body, name="/v1/recommendations (session)")

    @task(10)
    def product_page(self) -> None:
        item = random.choice(IDS["items"])
        self.client.get(f"/v1/items/{item}/similar", name="/v1/items/{id}/similar")

    @task(5)
    def event_feed(self) -> None:
        if os.environ.get("RECSYS_LOAD_EVENTS", "1") == "0":
            return
        now = int(time.time() * 1000)
        visitor = random.choice(IDS["known"])
        batch = [
            {"timestamp": now, "visitorid": visitor, "event": "view", "itemid": item}
            for item in random.sample(IDS["items"], random.randint(1, 5))
        ]
        self.client.post("/v1/events", json=batch, name="/v1/events")
