"""The whole job on an S3 lake (a real SeaweedFS server on 127.0.0.1, signatures checked):
`recsys run` on tiny data, then `recsys serve` from that lake answering a recommendation, and
the training DAG (`airflow dags test`) on the same kind of lake.

Every stage runs as a user runs it, in the environment a user sets (`RECSYS_LAKE_URI=s3://...`
and the AWS variables); nothing reaches a DuckDB extension download: a connection without the
lake's filesystem fails loudly (autoload is off), it does not try the network.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from pathlib import Path

import duckdb
import httpx
import pytest
import s3fs

from recsys.cli import main
from recsys.snapshots import SNAPSHOT_TABLES
from tests.integration.test_airflow_training import airflow
from tests.s3server import SeaweedS3
from tests.service import clean_env, serving
from tests.unit.test_dags import airflow_env, write_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def s3_env(seaweed_s3: SeaweedS3, bucket: str, data_dir: Path) -> dict[str, str]:
    return {
        **seaweed_s3.env(),
        "RECSYS_DATA_DIR": str(data_dir),
        "RECSYS_LAKE_URI": f"s3://{bucket}/lake",
    }


def lake_fs(seaweed_s3: SeaweedS3) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(**seaweed_s3.s3fs_options(), use_listings_cache=False)


def test_recsys_run_then_serve_on_s3(
    tiny_raw: Path,
    seaweed_s3: SeaweedS3,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = s3_env(seaweed_s3, s3_bucket, tmp_path / "data")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(["run", "--raw-dir", str(tiny_raw), "--search-budget", "3", "--force"])
    assert code == 0, output.getvalue()[-3000:]

    fs = lake_fs(seaweed_s3)
    version = fs.cat(f"{s3_bucket}/lake/snapshots/LATEST").decode().strip()
    assert fs.exists(f"{s3_bucket}/lake/snapshots/{version}/snapshot.duckdb")
    assert fs.glob(f"{s3_bucket}/lake/features/*/interactions.parquet")
    assert not (tmp_path / "data" / "lake").exists()  # the lake is on S3 only

    visitor = output.getvalue().split("/v1/recommendations/")[1].split("?")[0]
    with serving(clean_env(**env), tmp_path / "serve.log") as url:
        response = httpx.get(f"{url}/v1/recommendations/{visitor}?k=5", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["snapshot_version"] == version and len(body["items"]) == 5
    assert body["strategy"] == "personalized"


def test_training_dag_on_s3(
    tiny_raw: Path,
    seaweed_s3: SeaweedS3,
    s3_bucket: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The training DAG end to end (ingest -> Cosmos features -> ALS -> ranking -> ranker ->
    evaluate -> gate -> publish), every model a task, lineage recorded, a snapshot published.
    It runs once, on S3: the DAG reaches the lake only through `recsys.lake`, which the local
    runs of `recsys run` and the DAG's empty-lake test cover on a local folder."""
    target = tmp_path_factory.getbasetemp() / "dbt_manifest"
    manifest = write_manifest(target, airflow_env(target.parent / "manifest_env", target))
    env = {**airflow_env(tmp_path, manifest), **s3_env(seaweed_s3, s3_bucket, tmp_path / "data")}
    airflow(["db", "migrate"], env, timeout=300)
    # `dags test` runs the tasks one by one in its own process: it needs no pool (make airflow
    # creates it for the scheduler); force: tiny data may not beat the baselines
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

    fs = lake_fs(seaweed_s3)
    snapshots = f"{s3_bucket}/lake/snapshots"
    version = fs.cat(f"{snapshots}/LATEST").decode().strip()
    manifest_json = json.loads(fs.cat(f"{snapshots}/{version}/manifest.json"))
    assert not (tmp_path / "data" / "lake").exists()  # nothing of the lake landed locally
    data = tmp_path / "data"
    metrics = json.loads((data / "reports" / "metrics.json").read_text())
    assert manifest_json["metrics"]["models"] == metrics["models"]
    assert manifest_json["forced"] == (not manifest_json["gate"]["passed"])
    training = json.loads((data / "models" / "training.json").read_text())
    # the Cosmos builds ran as of t1 with labels to t2, as `recsys train` builds them
    assert training["feature_build"]["feature_version"].startswith("fv1_")
    assert str(training["feature_build"]["cutoff_at"]).startswith(training["windows"]["t1"][:19])
    snapshot = tmp_path / "snapshot.duckdb"
    fs.get(f"{snapshots}/{version}/snapshot.duckdb", str(snapshot))
    with duckdb.connect(str(snapshot), read_only=True) as con:
        tables = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
        assert set(SNAPSHOT_TABLES) <= tables
        (n_recs,) = con.execute("select count(*) from recommendations").fetchone() or (0,)
        assert n_recs > 0

    # lineage: the snapshot asset got an event naming the version, the raw tables theirs
    by_asset = {name: json.loads(extra or "{}") for name, extra in events}
    assert by_asset["recsys.snapshots"]["version"] == version
    assert {"recsys.raw.events", "recsys.features.interactions"} <= set(by_asset)
    assert not (data / "airflow" / "warehouse.lease").exists()  # released at the end
