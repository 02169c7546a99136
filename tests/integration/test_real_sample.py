"""The pipeline on a real slice of RetailRocket that nobody here wrote (views only)."""

from __future__ import annotations

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
