"""The DAGs' `dbt_target` param through real Airflow: `airflow dags test` with a conf, in a
temporary home with its SQLite metadata DB, as tests/integration/test_airflow_training.py runs it.

- An invalid name is refused when the run is created, before any task: no run in the metadata.
- A valid name reaches dbt: a features run triggered with a target the profile does not have
  ingests, then every dbt task it starts renders the name into its env (the Rendered Template
  Airflow records), invokes dbt with `--target <name>` and fails on dbt's own refusal of it
  (which names the target, so no default was used instead); the lease is given back. That the
  targets the profile has build is the rest of the suite's (`local`, `s3`) and
  tests/unit/test_dags.py's (each task's dbt command, every DAG, with `spark`).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from recsys.settings import REPO_ROOT
from tests.integration.test_airflow_training import AIRFLOW, airflow
from tests.unit.test_dags import LANDED_CSV, airflow_env, write_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG = "recsys_features"
UNKNOWN = "no_such_target"


def dags_test(conf: dict[str, str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`airflow dags test` with `conf`, whatever its exit code."""
    return subprocess.run(
        [AIRFLOW, "dags", "test", DAG, "-c", json.dumps(conf)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_runs_dbt_target_reaches_dbt_and_an_invalid_one_is_refused(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    target = tmp_path_factory.getbasetemp() / "dbt_manifest"
    manifest = write_manifest(target, airflow_env(target.parent / "manifest_env", target))
    env = airflow_env(tmp_path, manifest)
    airflow(["db", "migrate"], env, timeout=300)
    db_path = tmp_path / "home" / "airflow.db"

    refused = dags_test({"dbt_target": "local; rm -rf /"}, env)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output[-3000:]
    assert "Invalid input for param dbt_target" in output, output[-3000:]
    with sqlite3.connect(db_path) as db:
        assert db.execute("select count(*) from dag_run").fetchone() == (0,)
        assert db.execute("select count(*) from task_instance").fetchone() == (0,)

    # events the API landed: the ingest has something, so the dbt tasks start
    landing = tmp_path / "data" / "lake" / "landing" / "events"
    landing.mkdir(parents=True)
    (landing / "batch-1.csv").write_text(LANDED_CSV)
    run = dags_test({"dbt_target": UNKNOWN}, env)
    output = run.stdout + run.stderr
    assert f"'--target', '{UNKNOWN}'" in output, output[-6000:]
    assert f"does not have a target named '{UNKNOWN}'" in output, output[-6000:]

    with sqlite3.connect(db_path) as db:
        (conf,) = db.execute("select conf from dag_run where dag_id = ?", (DAG,)).fetchone()
        states = dict(
            db.execute("select task_id, state from task_instance where dag_id = ?", (DAG,))
        )
        rendered = {
            task_id: json.loads(fields)
            for task_id, fields in db.execute(
                "select task_id, rendered_fields from rendered_task_instance_fields"
                " where dag_id = ?",
                (DAG,),
            )
        }
    assert json.loads(conf) == {"dbt_target": UNKNOWN}
    assert states["ingest"] == "success"
    started = [t for t, s in states.items() if t.startswith("features.") and s == "failed"]
    assert started, states  # the group's first tasks ran dbt, which refused the target
    for task_id in started:
        assert rendered[task_id]["env"]["RECSYS_DBT_TARGET"] == UNKNOWN, task_id
    assert states["summary"] == "upstream_failed"
    assert states["release_warehouse"] == "success"
    assert not (tmp_path / "data" / "airflow" / "warehouse.lease").exists()
