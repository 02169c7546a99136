"""The pipeline on a real slice of RetailRocket that nobody here wrote (views only)."""

from __future__ import annotations

import json

import duckdb
import pytest

from recsys.ingest import ingest
from recsys.lake import Lake
from recsys.settings import Settings
from recsys.warehouse import build
from tests.conftest import SHARED_SAMPLE

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not (SHARED_SAMPLE / "events.csv").exists(), reason="shared sample absent")
def test_real_sample_ingests_and_builds(settings: Settings) -> None:
    lines = (SHARED_SAMPLE / "events.csv").read_bytes().count(b"\n") - 1
    reports = {r.table: r for r in ingest(SHARED_SAMPLE, Lake.from_settings(settings))}
    events = reports["events"]
    assert events.raw_rows == lines
    assert events.accepted + events.rejected == events.raw_rows
    # only events.csv: the other tables are empty, not missing
    assert reports["item_properties"].raw_rows == 0
    assert reports["category_tree"].raw_rows == 0
    build(settings)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        n_events = con.execute("select count(*) from events").fetchone()
        assert n_events == (events.accepted,)
        # without properties every item falls in the unknown category
        cats = con.execute("select distinct category_id from item_features").fetchall()
        assert cats == [(-1,)]
        unknown = con.execute(
            "select category_path from categories where category_id = -1"
        ).fetchone()
        assert unknown is not None
        # sessions were cut, and visitors have features
        n_sessions, n_visitors = con.execute(
            "select count(*), count(distinct visitor_id) from sessions"
        ).fetchone()  # type: ignore[misc]
        assert 0 < n_visitors <= n_sessions <= events.accepted
        assert con.execute("select count(*) from visitor_features").fetchone() == (n_visitors,)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_SAMPLE / "events.csv").exists(), reason="shared sample absent")
def test_without_item_properties_popularity_is_real_served_and_gated(settings: Settings) -> None:
    """No availability anywhere (the sample has no item properties): the popularity baseline
    is a list, the same list the API's fallback serves, and the gate compares against it
    (it once kept only items known to be available: an empty list scoring 0)."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from models_ml import evaluation
    from models_ml.publish import GATE_BASELINES
    from recsys.cli import main
    from recsys.snapshots import latest_manifest
    from tests.unit.api.conftest import make_settings

    code = main(["run", "--raw-dir", str(SHARED_SAMPLE), "--search-budget", "3", "--force"])
    assert code == 0
    metrics = json.loads((settings.metrics_path).read_text())
    assert set(GATE_BASELINES) <= set(metrics["models"])
    assert metrics["models"]["popularity"]["coverage@10"] > 0  # it recommended something
    manifest = latest_manifest(Lake.from_settings(settings))
    assert manifest is not None and manifest["gate"]["baselines"] == list(GATE_BASELINES)
    # the warehouse ends as of the latest event, as the snapshot was built
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("select count(*) from item_features where is_available").fetchone() == (
            0,
        )
        popular = evaluation.popular_items(con, 10)
    assert len(popular) == 10
    with TestClient(create_app(make_settings(settings.data_dir))) as client:
        answer = client.get("/v1/recommendations/999999999999?k=10").json()
    assert answer["strategy"] == "popular"
    assert [item["item_id"] for item in answer["items"]] == popular
