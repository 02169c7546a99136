"""`recsys serve --workers 2`: one scrape of `/metrics` covers every worker.

Real uvicorn with two worker processes on 127.0.0.1. Requests come on many connections at
once, so that both workers answer some (each worker's own count is read from its file); then
any one scrape of `/metrics`, whichever worker answers it, must count every request
(prometheus_client's multiprocess mode, api/metrics.py): a worker reporting only its own would
report fewer. When the server stops, its metric files are removed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsys.lake import Lake
from tests import service
from tests.api_snapshots import default_world, publish_world
from tests.service import clean_env
from tests.unit.api.conftest import KEY, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THREADS = 8
PER_THREAD = 40


def scrape(url: str) -> tuple[float, float]:
    """(the answering worker's start time, GET answers for visitor lists counted)."""
    text = httpx.get(f"{url}/metrics", timeout=5, headers={"Connection": "close"}).text
    started = answers = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "process_start_time_seconds":
                started = sample.value
            if sample.name == "recsys_recommendations_total" and sample.labels == {
                "route": "visitor",
                "strategy": "personalized",
            }:
                answers = sample.value
    assert started is not None and answers is not None, text[:2000]
    return started, answers


def answers_per_worker(data_dir: Path) -> dict[str, float]:
    """GET answers for visitor lists as each worker wrote them to its own file (pid -> count),
    read with prometheus_client's own reader of those files."""
    from prometheus_client.mmap_dict import MmapedDict

    counts = {}
    for path in (data_dir / "api-metrics").glob("metrics-*/counter_*.db"):
        total = 0.0
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)  # family, sample, labels, help
            if sample == "recsys_recommendations_total" and labels == {
                "route": "visitor",
                "strategy": "personalized",
            }:
                total += value
        counts[path.stem.removeprefix("counter_")] = total
    return counts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("workers")
    publish_world(Lake.from_settings(make_settings(data_dir)), default_world())
    env = clean_env(RECSYS_API_KEYS=KEY, RECSYS_DATA_DIR=str(data_dir))
    process, url = service.start(env, data_dir / "serve.log", args=["--workers", "2"])
    try:
        yield url, data_dir
    finally:
        service.stop(process)
    # the workers' metric files go with the server
    assert not list((data_dir / "api-metrics").glob("metrics-*")), "metric files left behind"


def test_one_scrape_counts_the_requests_of_every_worker(server: tuple[str, Path]) -> None:
    url, data_dir = server
    # both workers up: each answers /readyz once its snapshot is loaded
    service.wait_for(
        lambda: all(
            httpx.get(f"{url}/readyz", timeout=5, headers={"Connection": "close"}).status_code
            == 200
            for _ in range(20)
        ),
        60,
        "both workers ready",
    )
    _, before = scrape(url)
    failures: list[str] = []

    def requests() -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=10) as client:
            for i in range(PER_THREAD):
                # a new connection now and then, so that the kernel hands them to both workers
                headers = {"Connection": "close"} if i % 4 == 0 else {}
                answer = client.get("/v1/recommendations/1001?k=5", headers=headers)
                if answer.status_code != 200 or answer.json()["strategy"] != "personalized":
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=requests) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    # what each worker counted itself (its own file); both answered some of the requests
    per_worker = answers_per_worker(data_dir)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker

    sent = THREADS * PER_THREAD
    assert sum(per_worker.values()) - before == sent
    # so any one scrape, whichever worker answers it, must report every worker's requests
    for _ in range(10):
        started, answers = scrape(url)
        assert answers - before == sent, f"the worker started at {started} reported {answers}"
