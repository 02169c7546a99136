"""The service under real uvicorn (`recsys serve` on 127.0.0.1): snapshots swapped every second
under concurrent requests, a broken one refused on the way, and not one failed request.
Then the load test's locustfile, run headless against it for a few seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsys.lake import Lake
from recsys.settings import REPO_ROOT
from recsys.snapshots import sha256_file
from tests import service
from tests.api_snapshots import (
    default_world,
    manifest_of,
    new_version,
    publish_unchecked,
    publish_world,
    write_snapshot,
)
from tests.service import clean_env, wait_for
from tests.unit.api.conftest import KEY, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lake = Lake.from_settings(make_settings(data_dir))
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "serve.log"

    def start(self, **settings: str) -> None:
        """The service on this data dir with one API key; `settings` add or replace RECSYS_
        variables."""
        defaults = {"RECSYS_API_POLL_SECONDS": "0.1", "RECSYS_API_KEYS": KEY}
        env = clean_env(**{**defaults, **settings, "RECSYS_DATA_DIR": str(self.data_dir)})
        self.process, self.url = service.start(env, self.log)
        self.port = int(self.url.rsplit(":", 1)[1])

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5)

    def served(self) -> str | None:
        return self.get("/readyz").json().get("snapshot_version")

    def metric(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def stop(self) -> None:
        if self.process is not None:
            service.stop(self.process)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("served"))
    world = default_world()
    world.model_version = "m0"
    publish_world(running.lake, world)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        print(running.log.read_text()[-3000:])


def hammer(server: Server, stop: threading.Event, failures: list[str], seen: Counter[str]) -> None:
    """Requests back to back, of every kind; anything but the expected status is a failure."""
    calls = [
        ("GET", "/v1/recommendations/1001?k=5", None, 200),
        ("GET", "/v1/recommendations/424242?category_id=11", None, 200),
        ("POST", "/v1/recommendations", {"visitor_id": 1001, "session_item_ids": [45]}, 200),
        ("POST", "/v1/recommendations", {"session_item_ids": [5, 6], "k": 5}, 200),
        ("GET", "/v1/items/5/similar", None, 200),
        ("GET", "/v1/recommendations/1001?exclude=1,2,3", None, 200),
    ]
    event = {"timestamp": 1442545187123, "visitorid": 1, "event": "view", "itemid": 5}
    n = 0
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=10) as client:
        while not stop.is_set():
            n += 1
            method, path, body, expected = calls[n % len(calls)]
            if n % 25 == 0:
                method, path, body, expected = "POST", "/v1/events", [event], 202
            try:
                response = client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                failures.append(f"{method} {path}: {type(exc).__name__}: {exc}")
                continue
            if response.status_code != expected:
                failures.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
                continue
            if expected == 200:
                seen[response.json()["model_version"]] += 1


def test_swaps_under_load_fail_no_request(server: Server) -> None:
    stop = threading.Event()
    failures: list[str] = []
    seen: Counter[str] = Counter()
    threads = [
        threading.Thread(target=hammer, args=(server, stop, failures, seen)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    try:
        swaps = server.metric("recsys_snapshot_swaps_total")
        for i in range(1, 7):
            world = default_world()
            world.model_version = f"m{i}"
            version = publish_world(server.lake, world).version
            wait_for(lambda v=version: server.served() == v, 60, f"snapshot m{i}")
            if i == 3:  # a broken one in between: the file is not what the manifest says
                good = write_snapshot(world, Path(tempfile.mkdtemp()) / "snapshot.duckdb")
                digest = sha256_file(good)
                bad = good.with_name("bad.duckdb")
                shutil.copy(good, bad)
                with open(bad, "r+b") as fh:
                    fh.seek(4096)
                    fh.write(b"\0" * 64)
                version = new_version()
                publish_unchecked(
                    server.lake, bad, version, {**manifest_of(world), "sha256": digest}
                )
                wait_for(
                    lambda: (
                        server.metric("recsys_snapshot_swap_failures_total", reason="checksum") >= 1
                    ),
                    60,
                    "the broken snapshot to be refused",
                )
                assert server.served() != version
            time.sleep(0.3)  # a little traffic on each version
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not failures, failures[:10]
    assert sum(seen.values()) > 200, seen
    assert {"m1", "m2", "m3", "m6"} <= set(seen), seen
    assert server.metric("recsys_snapshot_swaps_total") == swaps + 6
    assert server.get("/readyz").json()["model_version"] == "m6"


def test_the_locustfile_runs_against_the_server(server: Server, tmp_path: Path) -> None:
    locust = Path(sys.executable).parent / "locust"
    version = server.served()
    snapshot = server.data_dir / "lake" / "snapshots" / str(version) / "snapshot.duckdb"
    env = {
        **os.environ,
        "RECSYS_LOAD_SNAPSHOT": str(snapshot),
        "RECSYS_API_KEY": KEY,
    }
    result = subprocess.run(
        [
            str(locust),
            "-f",
            str(REPO_ROOT / "tests" / "load" / "locustfile.py"),
            "--headless",
            "--users",
            "8",
            "--spawn-rate",
            "8",
            "--run-time",
            "4s",
            "--host",
            server.url,
            "--only-summary",
            "--csv",
            str(tmp_path / "locust"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stats = (tmp_path / "locust_stats.csv").read_text().splitlines()
    aggregated = next(line for line in stats if ",Aggregated," in line).split(",")
    header = stats[0].split(",")
    requests = int(aggregated[header.index("Request Count")])
    failures = int(aggregated[header.index("Failure Count")])
    assert requests > 20 and failures == 0, stats
