"""The service's metrics through a real Prometheus: scraped, stored and read back by PromQL.

`recsys serve` runs under uvicorn on 127.0.0.1 over a published snapshot; Prometheus 2.42
(Debian's binaries, unpacked by `make tools`) scrapes its `/metrics` every second. The request
histogram must come back through Prometheus's HTTP API with the route template as a label, and
`promtool check metrics` must find nothing to say about the exposition (naming conventions:
units as suffixes, `_total` counters, help strings).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recsys.lake import Lake
from tests.api_snapshots import publish_world
from tests.prometheus import PROMTOOL, PrometheusServer, require
from tests.service import clean_env, serving
from tests.unit.api.conftest import make_settings

pytestmark = pytest.mark.integration

ROUTE = "/v1/recommendations/{visitor_id}"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("prom-served")
    publish_world(Lake.from_settings(make_settings(data_dir)))
    with serving(clean_env(RECSYS_DATA_DIR=str(data_dir)), data_dir / "serve.log") as url:
        yield url


def test_prometheus_scrapes_the_request_histogram_by_route(service: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=service, timeout=5) as client:
        for visitor in (1001, 1002, 424242) * 5:  # known, known, unknown: 15 answers
            assert client.get(f"/v1/recommendations/{visitor}?k=3").status_code == 200
        assert client.get("/v1/recommendations/not-a-number").status_code == 422

    target = service.removeprefix("http://")
    with PrometheusServer(tmp_path, targets=[target]) as prom:
        prom.wait_for('up{job="recsys"}', lambda r: bool(r) and r[0]["value"][1] == "1")
        count = f'sum(recsys_http_request_duration_seconds_count{{route="{ROUTE}",status="200"}})'
        result = prom.wait_for(count, lambda r: bool(r) and float(r[0]["value"][1]) >= 15)
        assert float(result[0]["value"][1]) == 15
        rejected = prom.query(
            f'sum(recsys_http_request_duration_seconds_count{{route="{ROUTE}",status="422"}})'
        )
        assert float(rejected[0]["value"][1]) == 1
        # a quantile computed by Prometheus from the buckets: the histogram is usable as one
        p99 = prom.query(
            "histogram_quantile(0.99, sum by (le) "
            f'(recsys_http_request_duration_seconds_bucket{{route="{ROUTE}"}}))'
        )
        assert 0 < float(p99[0]["value"][1]) < 5
        strategies = prom.query("sum by (strategy) (recsys_recommendations_total)")
        by_strategy = {r["metric"]["strategy"]: float(r["value"][1]) for r in strategies}
        assert by_strategy["personalized"] == 10 and by_strategy["popular"] == 5


def test_promtool_finds_nothing_wrong_with_the_exposition(service: str) -> None:
    text = httpx.get(f"{service}/metrics", timeout=5).text
    checked = subprocess.run(
        [str(require(PROMTOOL)), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr
