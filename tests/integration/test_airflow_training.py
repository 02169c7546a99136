"""`airflow dags test recsys_training` end to end on tiny data: a new snapshot is published.

Real Airflow (SQLite metadata DB in a temporary home), real Cosmos running dbt on DuckDB, the
real pipeline: ingest -> features -> ALS -> ranking -> ranker -> evaluate -> gate -> publish.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from models_ml.publish import SNAPSHOT_TABLES
from recsys.settings import REPO_ROOT
from tests.unit.test_dags import airflow_env, write_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def airflow(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [AIRFLOW, *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"airflow {args[0]} failed:\n{output[-6000:]}"
    return proc


def test_training_dag_publishes_a_snapshot(
    tiny_raw: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    target = tmp_path_factory.getbasetemp() / "dbt_manifest"
    manifest = write_manifest(target, airflow_env(target.parent / "manifest_env", target))
    env = airflow_env(tmp_path, manifest)
    airflow(["db", "migrate"], env, timeout=300)
    # `dags test` runs the tasks one by one in its own process: it needs no pool (make airflow
    # creates it for the scheduler); force: tiny data may not beat popularity
    conf = {"raw_dir": str(tiny_raw), "search_budget_s": 3, "force": True}
    airflow(["dags", "test", "recsys_training", "-c", json.dumps(conf)], env, timeout=600)

    with sqlite3.connect(tmp_path / "home" / "airflow.db") as db:
        states = dict(
            db.execute(
                "select task_id, state from task_instance where dag_id = 'recsys_training'"
            ).fetchall()
        )
        (run_state,) = db.execute(
            "select state from dag_run where dag_id = 'recsys_training'"
        ).fetchone()
        events = db.execute(
            """
            select asset.name, asset_event.extra from asset_event
            join asset on asset.id = asset_event.asset_id
            """
        ).fetchall()
    assert run_state == "success"
    assert states.pop("gate_refused") == "skipped"
    assert set(states.values()) == {"success"}, {t: s for t, s in states.items() if s != "success"}
    assert sum(t.startswith("features.") for t in states) > 15  # every model ran as a task

    data = tmp_path / "data"
    snapshots = data / "lake" / "snapshots"
    version = (snapshots / "LATEST").read_text().strip()
    manifest_json = json.loads((snapshots / version / "manifest.json").read_text())
    metrics = json.loads((data / "reports" / "metrics.json").read_text())
    assert manifest_json["metrics"]["models"] == metrics["models"]
    assert manifest_json["forced"] == (not manifest_json["gate"]["passed"])
    training = json.loads((data / "models" / "training.json").read_text())
    # the Cosmos builds ran as of t1 with labels to t2, as `recsys train` builds them
    assert training["feature_build"]["feature_version"].startswith("fv1_")
    assert str(training["feature_build"]["cutoff_at"]).startswith(training["windows"]["t1"][:19])
    with duckdb.connect(str(snapshots / version / "snapshot.duckdb"), read_only=True) as con:
        tables = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
        assert set(SNAPSHOT_TABLES) <= tables
        (n_recs,) = con.execute("select count(*) from recommendations").fetchone() or (0,)
        assert n_recs > 0

    # lineage: the snapshot asset got an event naming the version, the raw tables theirs
    by_asset = {name: json.loads(extra or "{}") for name, extra in events}
    assert by_asset["recsys.snapshots"]["version"] == version
    assert {"recsys.raw.events", "recsys.features.interactions"} <= set(by_asset)
    assert not (data / "airflow" / "warehouse.lease").exists()  # released at the end


def test_a_run_with_nothing_ingested_is_skipped_not_failed(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A fresh `make airflow`, DAG unpaused: the catch-up run once failed in training_windows
    with DuckDB's 'No files found that match the pattern'."""
    target = tmp_path_factory.getbasetemp() / "dbt_manifest"
    manifest = write_manifest(target, airflow_env(target.parent / "manifest_env", target))
    env = airflow_env(tmp_path, manifest)
    airflow(["db", "migrate"], env, timeout=300)
    # and a lease left by a run that died with Airflow: Airflow says that run is not running,
    # so the first claim takes it over instead of waiting for hours
    lease = tmp_path / "data" / "airflow" / "warehouse.lease"
    lease.parent.mkdir(parents=True, exist_ok=True)
    lease.write_text('{"owner": "recsys_training/manual__died", "since": "2026-01-01"}\n')
    for dag in ("recsys_training", "recsys_features"):
        run = airflow(["dags", "test", dag], env, timeout=300)
        assert "no events in" in run.stdout + run.stderr and "recsys ingest --raw-dir" in (
            run.stdout + run.stderr
        )
        with sqlite3.connect(tmp_path / "home" / "airflow.db") as db:
            states = dict(
                db.execute(
                    "select task_id, state from task_instance where dag_id = ?", (dag,)
                ).fetchall()
            )
            (run_state,) = db.execute(
                "select state from dag_run where dag_id = ?", (dag,)
            ).fetchone()
        assert run_state == "success", states
        assert states["ingest"] == "skipped"
        assert "failed" not in states.values() and "upstream_failed" not in states.values()
        assert states["release_warehouse"] == "success"  # the lease is given back
        if dag == "recsys_training":
            assert "taken over by recsys_training/" in run.stdout + run.stderr
    assert not (tmp_path / "data" / "airflow" / "warehouse.lease").exists()
