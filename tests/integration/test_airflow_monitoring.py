"""`airflow dags test recsys_monitoring` on what `recsys run` left: real Airflow (SQLite metadata
DB in a temporary home), real Cosmos running the monitoring models with dbt on DuckDB, the real
policy, on a copy of the tiny run's data dir. A week is landed as the API lands events; the
hourly DAG ingests it, builds the monitoring models, decides, and triggers `recsys_training`
only when the policy says so: with every second view turned into an add-to-cart (the event mix
drifts) it does, with the reason drift in the triggered run's conf; with the same week replayed
unchanged it does not.

`dags test` runs the monitoring run only: the triggered training run is created by Airflow's
execution API (as under a scheduler), queued, and not run. What shows the trigger happened is
read from the metadata DB: that `dag_run` row with its conf, and the trigger task's XCom naming
it.

Both cases share one Airflow home (`db migrate` is the slow part) and one data dir path, reset
between them: the lake's assets are named by their path, and Airflow keeps one active asset per
name, so a second path in the same home would make `ingest`'s assets inactive (its run fails).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from monitoring import export
from recsys.lake import Lake
from recsys.settings import Settings
from tests.conftest import TinyRun
from tests.integration.test_airflow_training import airflow
from tests.monitoring_windows import land_week
from tests.unit.test_dags import airflow_env, write_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG = "recsys_monitoring"
TRAINING = "recsys_training"


@dataclass(frozen=True)
class Home:
    """A migrated Airflow home; `root / "data"` is the data dir its runs see."""

    root: Path
    env: dict[str, str]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.root / "home" / "airflow.db")


@dataclass(frozen=True)
class Monitored:
    """One `dags test` of the monitoring DAG and what it left."""

    landed: int
    run_id: str
    run_state: str
    states: dict[str, str]  # task_id -> state, of this run
    xcoms: dict[tuple[str, str], Any]  # (task_id, key) -> value, of this run
    training_runs: list[dict[str, Any]]  # the recsys_training runs created meanwhile
    report: dict[str, Any]  # reports/monitoring.json
    decisions: list[dict[str, Any]]  # the lake's monitoring/decisions/, newest first
    lease_left: bool
    output: str


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    target = tmp_path_factory.getbasetemp() / "dbt_manifest"
    manifest = write_manifest(target, airflow_env(target.parent / "manifest_env", target))
    root = tmp_path_factory.mktemp("airflow_monitoring")
    env = airflow_env(root, manifest)
    airflow(["db", "migrate"], env, timeout=300)
    return Home(root, env)


def _run_ids(db: sqlite3.Connection, dag_id: str) -> set[str]:
    return {r for (r,) in db.execute("select run_id from dag_run where dag_id = ?", (dag_id,))}


def monitor_week(home: Home, tiny_run: TinyRun, shift: str | None) -> Monitored:
    """The tiny run's data dir, a week landed (`shift` as land_week's), the DAG's run."""
    assert tiny_run.exit_code == 0, tiny_run.output[-3000:]
    shutil.rmtree(home.data_dir, ignore_errors=True)
    tiny_run.copy(home.data_dir)
    settings = Settings(_env_file=None, recsys_data_dir=home.data_dir, recsys_lake_uri=None)  # type: ignore[call-arg]
    landed = land_week(settings, shift)
    with home.db() as db:
        before = {dag: _run_ids(db, dag) for dag in (DAG, TRAINING)}
    run = airflow(["dags", "test", DAG], home.env, timeout=600)
    with home.db() as db:
        (run_id,) = _run_ids(db, DAG) - before[DAG]
        (run_state,) = db.execute(
            "select state from dag_run where dag_id = ? and run_id = ?", (DAG, run_id)
        ).fetchone()
        states = dict(
            db.execute(
                "select task_id, state from task_instance where dag_id = ? and run_id = ?",
                (DAG, run_id),
            ).fetchall()
        )
        # XCom values and dag_run.conf are JSON text in Airflow 3's metadata DB
        xcoms = {
            (task_id, key): json.loads(value)
            for task_id, key, value in db.execute(
                "select task_id, key, value from xcom where dag_id = ? and run_id = ?",
                (DAG, run_id),
            )
        }
        training_runs = [
            {
                "run_id": r,
                "state": state,
                "run_type": run_type,
                "triggered_by": triggered_by,
                "conf": json.loads(conf) if conf is not None else None,
            }
            for r, state, run_type, triggered_by, conf in db.execute(
                "select run_id, state, run_type, triggered_by, conf from dag_run where dag_id = ?",
                (TRAINING,),
            )
            if r not in before[TRAINING]
        ]
        # the trigger needs the training DAG registered: `dags test` parsed the whole folder
        (known,) = db.execute(
            "select count(*) from dag where dag_id = ? and not is_stale", (TRAINING,)
        ).fetchone()
        assert known == 1
    return Monitored(
        landed=landed,
        run_id=run_id,
        run_state=run_state,
        states=states,
        xcoms=xcoms,
        training_runs=training_runs,
        report=json.loads((settings.reports_dir / "monitoring.json").read_text()),
        decisions=export.read_decisions(Lake.from_settings(settings)),
        lease_left=(home.data_dir / "airflow" / "warehouse.lease").exists(),
        output=run.stdout + run.stderr,
    )


def _common(found: Monitored) -> None:
    """What both cases share: the landed week ingested, the run succeeded, the lease given
    back, one decision recorded (the one this run made)."""
    assert found.landed > 50
    assert found.xcoms[("ingest", "landed_events")]["accepted"] == found.landed
    assert found.run_state == "success", found.states
    assert "failed" not in found.states.values() and "upstream_failed" not in found.states.values()
    for task_id in ("claim_warehouse", "ingest", "prepare", "decide", "should_retrain"):
        assert found.states[task_id] == "success", found.states
    monitoring = {t: s for t, s in found.states.items() if t.startswith("monitoring.")}
    assert "monitoring.dbt_project_test" in monitoring and len(monitoring) > 5
    assert set(monitoring.values()) == {"success"}, monitoring
    assert found.states["release_warehouse"] == "success" and not found.lease_left
    decided_at = [datetime.fromisoformat(d["decided_at"]) for d in found.decisions]
    assert decided_at == [datetime.fromisoformat(found.report["retrain"]["decided_at"])]


def test_a_shifted_week_triggers_training_with_the_drift_reason(
    home: Home, tiny_run: TinyRun
) -> None:
    found = monitor_week(home, tiny_run, shift="event_mix")
    _common(found)
    drift = found.report["drift"]
    assert drift["status"] == "fail"
    assert drift["event_mix"]["status"] == "fail"
    decision = found.xcoms[("decide", "return_value")]
    assert decision["decision"] is True and decision["reasons"] == ["drift"]
    assert any("event_mix" in detail for detail in decision["details"]), decision
    (recorded,) = found.decisions
    assert recorded["decision"] is True and recorded["reasons"] == ["drift"]
    assert found.report["retrain"]["decision"] is True

    assert found.states["trigger_training"] == "success"
    assert "Dag Run triggered successfully" in found.output
    # the training run the trigger created: queued (`dags test` does not run it), by the
    # operator, with the decision's reasons and details as lists in its conf
    (training,) = found.training_runs
    assert found.xcoms[("trigger_training", "trigger_run_id")] == training["run_id"]
    assert training["state"] == "queued"
    assert training["run_type"] == "operator_triggered"
    assert training["triggered_by"] == "OPERATOR"
    assert training["conf"] == {
        "reasons": ["drift"],
        "details": decision["details"],
        "dbt_target": "local",  # the monitoring run's own
    }


def test_the_same_week_unchanged_triggers_nothing(home: Home, tiny_run: TinyRun) -> None:
    found = monitor_week(home, tiny_run, shift=None)
    _common(found)
    drift = found.report["drift"]
    assert drift["status"] == "ok"
    assert drift["event_mix"]["status"] == "ok"
    decision = found.xcoms[("decide", "return_value")]
    assert decision["decision"] is False and decision["reasons"] == [] and decision["held"] == []
    (recorded,) = found.decisions
    assert recorded["decision"] is False and recorded["reasons"] == []
    assert found.report["retrain"]["decision"] is False

    # the short circuit skipped the trigger, and only it: the teardown still ran
    assert found.xcoms[("should_retrain", "skipmixin_key")] == {"skipped": ["trigger_training"]}
    assert found.states["trigger_training"] == "skipped"
    assert ("trigger_training", "trigger_run_id") not in found.xcoms
    assert found.training_runs == []
