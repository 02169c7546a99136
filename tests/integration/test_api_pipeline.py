"""The API over a snapshot the real pipeline published (tiny data, `recsys run` once a session):

- request-time features equal the rows dbt computed in `ranking_features` (feature parity),
  and the API builds the candidate pool the published lists were ranked from;
- POST for a published visitor scores the candidates as the published list scored them;
- GET answers from the real snapshot; events posted to the API reach `raw/` at the next ingest;
- `recsys serve` runs from an environment with the core and the `serve` extra only (no Airflow,
  dbt, implicit or matplotlib), built by uv from the lock and its cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api import features, recommend
from api.main import create_app
from api.snapshot import Snapshot
from models_ml.ranker import feature_frame
from recsys.cli import run_ingest
from recsys.settings import REPO_ROOT, Settings
from tests import service
from tests.conftest import TinyRun
from tests.unit.api.conftest import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def published(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of what `recsys run` published on tiny data (the session's `tiny_run`: ingest,
    train, evaluate, publish), so that posting events here changes nothing for other tests."""
    assert tiny_run.exit_code == 0, tiny_run.output[-3000:]
    return make_settings(tiny_run.copy(tmp_path_factory.mktemp("pipeline") / "data"))


@pytest.fixture(scope="module")
def client(published: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(published)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def snapshot(client: TestClient) -> Snapshot:
    current = client.app.state.store.current  # type: ignore[attr-defined]
    assert current is not None, client.get("/readyz").json()
    return current


def warehouse(settings: Settings, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql).df()


def test_request_time_features_equal_the_dbt_rows(published: Settings, snapshot: Snapshot) -> None:
    # a spread of visitors and their candidates, among them pairs with history and with a
    # category affinity (the joins most likely to differ)
    dbt = warehouse(
        published,
        """
        with visitors as (
            select distinct visitor_id from ranking_features
            order by hash(visitor_id) limit 40
        )
        select ranking_features.* from ranking_features
        inner join visitors on ranking_features.visitor_id = visitors.visitor_id
        order by ranking_features.visitor_id, ranking_features.item_id
        """,
    )
    assert len(dbt) > 500
    assert dbt["has_viewed_item"].any() and (dbt["category_events"] > 0).any()
    assert dbt["is_top_category"].any()
    ours = pd.concat(
        [
            features.feature_rows(
                snapshot,
                int(visitor),
                group["item_id"].to_numpy(),
                group["candidate_source"].to_numpy(dtype=object),
            )
            for visitor, group in dbt.groupby("visitor_id", sort=True)
        ],
        ignore_index=True,
    )
    assert list(ours.columns) == list(dbt.columns)  # same names, same order
    pd.testing.assert_series_equal(ours["item_id"], dbt["item_id"], check_dtype=False)
    # what the model sees is identical, value for value (float32 and integer categories)
    columns = snapshot.ranker.features
    cats = snapshot.ranker.cat_features
    pd.testing.assert_frame_equal(
        feature_frame(ours, columns, cats), feature_frame(dbt, columns, cats)
    )
    # and the values themselves, to float precision, missing where dbt's are missing
    assert ours["candidate_source"].tolist() == dbt["candidate_source"].tolist()
    for name in features.FEATURE_COLUMNS:
        if name == "candidate_source":
            continue
        mine = ours[name].to_numpy(dtype=np.float64, na_value=np.nan)
        theirs = dbt[name].to_numpy(dtype=np.float64, na_value=np.nan)
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, equal_nan=True, err_msg=name)


def test_the_api_builds_the_pool_the_published_lists_were_ranked_from(
    published: Settings, snapshot: Snapshot
) -> None:
    dbt = warehouse(
        published,
        "select visitor_id, item_id, candidate_source from ranking_features order by all",
    )
    assert set(dbt["candidate_source"]) == {"als", "revisit", "similar", "popular"}
    visitors = dbt["visitor_id"].unique()
    checked = 0
    for visitor in visitors[:: max(1, len(visitors) // 60)].tolist():
        pool, sources = recommend.candidate_pool(snapshot, int(visitor), [])
        mine = sorted(zip(pool.tolist(), sources.tolist(), strict=True))
        rows = dbt[dbt["visitor_id"] == visitor]
        theirs = sorted(
            zip(rows["item_id"].tolist(), rows["candidate_source"].tolist(), strict=True)
        )
        assert mine == theirs, visitor
        checked += 1
    assert checked >= 20


def test_post_scores_the_candidates_as_the_published_list_did(
    client: TestClient, snapshot: Snapshot
) -> None:
    visitors = [int(v) for v in snapshot.recs.keys[:: max(1, len(snapshot.recs.keys) // 15)]]
    assert visitors
    for visitor in visitors:
        start, end = snapshot.recs.span(visitor)
        published = snapshot.rec_cols["score"][start:end].astype(np.float64)
        body = client.post(
            "/v1/recommendations", json={"visitor_id": visitor, "k": end - start}
        ).json()
        assert body["strategy"] == "personalized"
        got = [row["score"] for row in body["items"] if row["source"] == "ranker"]
        # the same scores in the same order (ties may order their items differently)
        np.testing.assert_allclose(got, published[: len(got)], atol=2e-6)
        assert len(got) == end - start


def test_get_answers_from_the_real_snapshot(client: TestClient, snapshot: Snapshot) -> None:
    visitor = int(snapshot.recs.keys[0])
    body = client.get(f"/v1/recommendations/{visitor}").json()
    assert body["strategy"] == "personalized" and len(body["items"]) == 10
    assert body["model_version"] == snapshot.model_version
    unknown = client.get("/v1/recommendations/999999999").json()
    assert unknown["strategy"] == "popular" and len(unknown["items"]) == 10
    item = int(snapshot.similar.keys[0])
    assert client.get(f"/v1/items/{item}/similar").json()["strategy"] == "similar"


def test_posted_events_reach_raw_at_the_next_ingest(
    client: TestClient, published: Settings, tiny_raw: Path
) -> None:
    lake_events = f"{published.lake_uri}/raw/events/*.parquet"
    count = f"select count(*) from read_parquet('{lake_events}')"
    before = duckdb.sql(count).fetchall()[0][0]
    batch = [
        {"timestamp": 1442545187123, "visitorid": 7, "event": "view", "itemid": 11},
        {
            "timestamp": 1442545188123,
            "visitorid": 7,
            "event": "transaction",
            "itemid": 11,
            "transactionid": 3,
        },
    ]
    assert client.post("/v1/events", json=batch).status_code == 202
    assert client.post("/v1/events", json=batch[0]).status_code == 202
    reports = {r.table: r for r in run_ingest(tiny_raw, published)}
    assert reports["events"].unchanged  # the CSV is the same; only the landed files are new
    assert reports["landed_events"].accepted == 3
    assert duckdb.sql(count).fetchall()[0][0] == before + 3
    run_ingest(tiny_raw, published)  # again: nothing more
    assert duckdb.sql(count).fetchall()[0][0] == before + 3


def uv_command() -> list[str]:
    """uv as `make install` finds it: on PATH, else the module of the Python that installed it."""
    if found := shutil.which("uv"):
        return [found]
    for python in ("python3", sys.executable):
        path = shutil.which(python) or python
        if subprocess.run([path, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [path, "-m", "uv"]
    raise AssertionError("uv is needed to build the serve-only environment (make install)")


def test_serve_runs_from_an_environment_without_the_training_stack(
    published: Settings, tmp_path: Path
) -> None:
    env_dir = tmp_path / "serve-env"
    build = subprocess.run(
        [*uv_command(), "sync", "--frozen", "--offline", "--no-dev", "--extra", "serve", "--quiet"],
        cwd=REPO_ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(env_dir), "UV_PYTHON_DOWNLOADS": "never"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    python = str(env_dir / "bin" / "python")
    for absent in ("airflow", "dbt", "implicit", "matplotlib", "cosmos"):
        probe = subprocess.run([python, "-c", f"import {absent}"], capture_output=True, text=True)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, absent
    assert subprocess.run([python, "-c", "import api.main, catboost"]).returncode == 0
    env = service.clean_env(RECSYS_DATA_DIR=str(published.data_dir))
    process, url = service.start(env, tmp_path / "serve.log", python=python)
    try:
        import httpx

        visitor = int(
            duckdb.connect(str(published.warehouse_path), read_only=True)
            .execute("select visitor_id from visitor_features order by n_events desc limit 1")
            .fetchone()[0]
        )
        answer = httpx.get(f"{url}/v1/recommendations/{visitor}?k=5", timeout=10)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == 5
        ranked = httpx.post(
            f"{url}/v1/recommendations", json={"visitor_id": visitor, "k": 5}, timeout=10
        )
        assert ranked.status_code == 200, ranked.text
    finally:
        service.stop(process)
