"""The pandas marts of the warehouse benchmark (benchmarks/pandas_marts.py): dbt's rules on
hand-made events, and the same rows as dbt's `sessions` and `interactions` on the tiny run."""

from __future__ import annotations

import importlib
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.settings import REPO_ROOT
from tests.conftest import TinyRun

# the benchmark scripts import their helpers from their own folder, as a script does
if str(REPO_ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
pandas_marts = importlib.import_module("pandas_marts")

T0 = datetime(2015, 6, 1)
EPOCH = datetime(1970, 1, 1)


def ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


def lake(tmp_path: Path, rows: list[tuple[datetime, int, str, int]]) -> Path:
    """A data dir whose lake holds `rows` (time, visitor, event type, item) as raw events."""
    folder = tmp_path / "data" / "lake" / "raw" / "events"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "timestamp": pa.array([ms(r[0]) for r in rows], pa.int64()),
            "visitorid": pa.array([r[1] for r in rows], pa.int64()),
            "event": pa.array([r[2] for r in rows], pa.string()),
            "itemid": pa.array([r[3] for r in rows], pa.int64()),
            "transactionid": pa.array([7 if r[2] == "transaction" else None for r in rows]),
            "impression_id": pa.array([None] * len(rows), pa.string()),
        }
    )
    # two files, as several ingests leave them
    pq.write_table(table.slice(0, 2), folder / "a.parquet")
    pq.write_table(table.slice(2), folder / "b.parquet")
    return tmp_path / "data"


EVENTS = [
    (T0, 1, "view", 10),
    (T0 + timedelta(minutes=30), 1, "addtocart", 10),  # a gap of 30 minutes: same session
    (T0 + timedelta(minutes=60, milliseconds=1), 1, "view", 11),  # 30 min + 1 ms: a new one
    (T0 + timedelta(minutes=60, milliseconds=1), 1, "transaction", 11),  # a tie: the same
    (T0 + timedelta(days=30), 2, "view", 10),  # the latest event: the default cutoff
]
VARS = pandas_marts.MartVars(30, 30, {"view": 1.0, "addtocart": 4.0, "transaction": 10.0})


def test_sessions_split_after_a_gap_of_strictly_more_than_the_session_gap(
    tmp_path: Path,
) -> None:
    marts = pandas_marts.compute(lake(tmp_path, EVENTS), mart_vars=VARS)
    assert marts.cutoff == pd.Timestamp(T0 + timedelta(days=30))
    sessions = marts.sessions.sort_values(["visitor_id", "session_number"])
    assert list(sessions.columns) == pandas_marts.SESSION_COLUMNS
    assert sessions["session_id"].tolist() == ["1-1", "1-2", "2-1"]
    assert sessions["started_at"].tolist() == [
        pd.Timestamp(T0),
        pd.Timestamp(T0 + timedelta(minutes=60, milliseconds=1)),
        pd.Timestamp(T0 + timedelta(days=30)),
    ]
    assert sessions["duration_seconds"].tolist() == [1800.0, 0.0, 0.0]
    assert sessions["n_events"].tolist() == [2, 2, 1]
    assert sessions["n_carts"].tolist() == [1, 0, 0]
    assert sessions["n_purchases"].tolist() == [0, 1, 0]
    assert sessions["n_distinct_items"].tolist() == [1, 1, 1]
    assert sessions["is_converted"].tolist() == [False, True, False]
    assert str(sessions["session_number"].dtype) == "int32"


def test_interactions_weigh_events_by_type_and_age_at_the_cutoff(tmp_path: Path) -> None:
    marts = pandas_marts.compute(lake(tmp_path, EVENTS), mart_vars=VARS)
    rows = marts.interactions.set_index(["visitor_id", "item_id"])
    assert list(marts.interactions.columns) == pandas_marts.INTERACTION_COLUMNS
    # a view one half-life old weighs 0.5; a cart 30 minutes younger 4 * 0.5 ** (age / 30)
    age = 30 - 30 / (24 * 60)
    assert rows.loc[(1, 10), "weight"] == pytest.approx(0.5 + 4 * 0.5 ** (age / 30), rel=1e-12)
    assert rows.loc[(2, 10), "weight"] == 1.0  # age 0
    assert rows.loc[(1, 11), ["n_events", "n_views", "n_purchases"]].tolist() == [2, 1, 1]
    assert rows.loc[(1, 10), "last_interaction_at"] == pd.Timestamp(T0 + timedelta(minutes=30))


def test_a_cutoff_keeps_the_events_at_or_before_it(tmp_path: Path) -> None:
    cutoff = T0 + timedelta(minutes=30)
    marts = pandas_marts.compute(lake(tmp_path, EVENTS), cutoff=str(cutoff), mart_vars=VARS)
    assert marts.n_events == 2
    assert marts.sessions["session_id"].tolist() == ["1-1"]
    # the cart is at the cutoff (age 0), the view 30 minutes before it
    assert marts.interactions["weight"].tolist() == [
        pytest.approx(0.5 ** ((30 / (24 * 60)) / 30) + 4.0, rel=1e-12)
    ]


def test_compare_shows_the_first_rows_that_differ(tmp_path: Path) -> None:
    marts = pandas_marts.compute(lake(tmp_path, EVENTS), mart_vars=VARS)
    ours, keys = marts.interactions, pandas_marts.INTERACTION_KEYS
    assert pandas_marts.compare("interactions", ours, ours.iloc[::-1].copy(), keys) is None
    close = ours.assign(weight=ours["weight"] * (1 + 1e-12))
    assert pandas_marts.compare("interactions", ours, close, keys) is None
    off = ours.assign(weight=ours["weight"] * (1 + 1e-6))
    found = pandas_marts.compare("interactions", ours, off, keys)
    assert found is not None and "values differ in weight (3 rows)" in found
    fewer = pandas_marts.compare("interactions", ours, ours.iloc[1:], keys)
    assert fewer is not None and "3 rows in pandas, 2 in dbt" in fewer
    assert "only in pandas: 1" in fewer


@pytest.mark.integration
@pytest.mark.slow
def test_the_pandas_marts_are_the_dbt_marts_of_the_tiny_run(tiny_run: TinyRun) -> None:
    """The same rows as dbt's marts on the session's tiny run (the warehouse of its last,
    publish, build: as of the latest event). The session builds `tiny_run` once per worker
    for the integration tests; this adds about a second to it (alone: the run's ~2 minutes)."""
    assert tiny_run.exit_code == 0, tiny_run.output[-3000:]
    marts = pandas_marts.compute(tiny_run.data_dir)
    assert len(marts.sessions) and len(marts.interactions)
    assert pandas_marts.check(marts, tiny_run.data_dir / "warehouse.duckdb") == []
