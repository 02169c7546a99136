"""`airflow dags test` on a local lake: real Airflow (SQLite metadata DB in a temporary home),
real Cosmos running dbt on DuckDB. The training DAG's full run, which publishes a snapshot, is
`tests/integration/test_s3_pipeline.py::test_training_dag_on_s3` (once, on S3: the suite's
time); `airflow()` here is the helper both use.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

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
