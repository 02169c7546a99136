"""Experiments on the routes: the variant chooses the policy, the answer and its impression say
which, and the file is reloaded when it changes (recsys.experiments, api.loop)."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from api.impressions import LANDING_DIR
from tests.api_snapshots import default_world

AB = """
version: 1
experiments:
  - name: ranker_vs_popularity
    variants:
      - {name: control, weight: 50, policy: ranker}
      - {name: popular, weight: 50, policy: popularity}
"""
INTERLEAVED = """
version: 1
experiments:
  - name: mix
    routes: [visitor, session]
    variants:
      - {name: control, weight: 0, policy: ranker}
      - {name: mixed, weight: 1, policy: {interleave: [ranker, popularity]}}
"""


def write(path: Path, text: str) -> None:
    path.write_text(text)
    # a new mtime even within the file system's time resolution
    stamp = time.time_ns() + 10**9
    os.utime(path, ns=(stamp, stamp))


def impressions(data_dir: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((data_dir / "lake" / LANDING_DIR).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[record["impression_id"]] = record
    return records


def test_variants_choose_the_policy(client_for: Callable[..., TestClient], tmp_path: Path) -> None:
    experiments = tmp_path / "experiments.yaml"
    write(experiments, AB)
    client = client_for(default_world(), recsys_experiments_file=experiments)
    seen: dict[str, Counter] = {}
    answers = {}
    for visitor in (1001, 1002, 2001, *range(5000, 5040)):
        body = client.get(f"/v1/recommendations/{visitor}?k=3").json()
        assert body["experiment"] == "ranker_vs_popularity"
        again = client.get(f"/v1/recommendations/{visitor}?k=3").json()
        assert again["variant"] == body["variant"]  # the same visitor, the same variant
        seen.setdefault(body["variant"], Counter())[body["strategy"]] += 1
        answers[visitor] = body
    assert set(seen) == {"control", "popular"}
    assert set(seen["popular"]) == {"popular"}  # the popularity policy, for everyone
    popular_items = [i["item_id"] for i in client.get("/v1/recommendations/5?k=3").json()["items"]]
    for body in answers.values():
        if body["variant"] == "popular":
            assert [i["item_id"] for i in body["items"]] == popular_items
    # visitor 1001 has a published list: under the control it is served as it is
    if answers[1001]["variant"] == "control":
        assert answers[1001]["strategy"] == "personalized"
    # a session without a visitor is in no experiment, and gets the control's policy
    anonymous = client.post("/v1/recommendations", json={"session_item_ids": [3], "k": 3}).json()
    assert anonymous["experiment"] is None and anonymous["variant"] is None
    # similar items are never split
    assert client.get("/v1/items/3/similar?k=3").json()["experiment"] is None
    client.__exit__(None, None, None)
    records = impressions(tmp_path / "data0")
    for body in answers.values():
        record = records[body["impression_id"]]
        assert (record["experiment"], record["variant"]) == (
            "ranker_vs_popularity",
            body["variant"],
        )
        assert record["policy"] == ("ranker" if body["variant"] == "control" else "popularity")


def test_interleaving_records_teams(client_for: Callable[..., TestClient], tmp_path: Path) -> None:
    experiments = tmp_path / "experiments.yaml"
    write(experiments, INTERLEAVED)
    client = client_for(default_world(), recsys_experiments_file=experiments)
    get = client.get("/v1/recommendations/1001?k=6").json()
    post = client.post("/v1/recommendations", json={"visitor_id": 1001, "k": 6}).json()
    for body in (get, post):
        assert body["variant"] == "mixed"
        assert len(body["items"]) == 6
        assert len({i["item_id"] for i in body["items"]}) == 6
        assert all(i["confidence"] is None for i in body["items"])
    ranker = client_for(default_world()).get("/v1/recommendations/1001?k=12").json()
    ranked = [i["item_id"] for i in ranker["items"]]
    client.__exit__(None, None, None)
    record = impressions(tmp_path / "data0")[get["impression_id"]]
    assert record["policy"] == "interleave:ranker,popularity"
    teams = [i["team"] for i in record["items"]]
    assert set(teams) == {"ranker", "popularity"}
    assert abs(teams.count("ranker") - teams.count("popularity")) <= 1  # team draft: balanced
    # the ranker's team picks in the ranker's own order
    picked = [i["item_id"] for i in record["items"] if i["team"] == "ranker"]
    assert picked == [item for item in ranked if item in picked]


def test_the_file_is_reloaded_and_a_bad_edit_keeps_the_last_good(
    client_for: Callable[..., TestClient], tmp_path: Path
) -> None:
    experiments = tmp_path / "experiments.yaml"
    write(experiments, AB)
    client = client_for(default_world(), recsys_experiments_file=experiments)
    assert client.get("/v1/recommendations/1001").json()["experiment"] == "ranker_vs_popularity"
    write(experiments, "version: 1\nexperiments:\n  - name: [oops\n")
    time.sleep(1.1)  # the file is looked at once a second at most
    assert client.get("/v1/recommendations/1001").json()["experiment"] == "ranker_vs_popularity"
    failures = re.search(
        r"^recsys_experiments_reload_failures_total (\S+)$", client.get("/metrics").text, re.M
    )
    assert failures and float(failures.group(1)) >= 1
    write(experiments, "version: 1\nexperiments: []\n")
    time.sleep(1.1)
    assert client.get("/v1/recommendations/1001").json()["experiment"] is None
