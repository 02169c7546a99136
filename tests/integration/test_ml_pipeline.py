"""`recsys run` end to end on tiny data: train, evaluate, publish, and the gate on real output."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from recsys.cli import main
from recsys.lake import Lake
from recsys.settings import Settings
from recsys.snapshots import SNAPSHOT_TABLES, latest_version
from tests.conftest import TinyRun

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METRIC_KEYS = {
    f"{name}@{k}"
    for name in ("precision", "recall", "ndcg", "map", "hit_rate", "mrr", "coverage")
    for k in (10, 20)
}


def test_run_trains_evaluates_and_publishes(tiny_run: TinyRun) -> None:
    assert tiny_run.exit_code == 0, tiny_run.output[-3000:]
    out = tiny_run.output
    for stage in ("ingest", "train", "evaluate", "publish"):
        assert f"[{stage}] done in" in out
    assert "als_catboost" in out  # the metric table is printed
    assert "curl 'http://127.0.0.1:8000/v1/recommendations/" in out  # and how to ask the API
    assert "VISITOR_ID" not in out  # with a visitor the snapshot knows

    settings = Settings(recsys_data_dir=tiny_run.data_dir, recsys_lake_uri=None)
    metrics = json.loads((settings.metrics_path).read_text())
    assert set(metrics["models"]) == {
        "popularity",
        "popularity_unseen",
        "als_unseen",
        "als",
        "als_catboost",
    }
    for name, values in metrics["models"].items():
        assert set(values) >= METRIC_KEYS
        assert all(0.0 <= v <= 1.0 for v in values.values())
        # an interval beside every mean over visitors (coverage is not one), around it
        intervals = metrics["intervals"][name]
        assert set(intervals) == METRIC_KEYS - {"coverage@10", "coverage@20"}
        low, high = intervals["ndcg@10"]
        assert low <= values["ndcg@10"] <= high
    assert set(metrics["differences"]) == {
        f"als_catboost - {b}" for b in ("popularity", "popularity_unseen", "als_unseen", "als")
    }
    pool = metrics["pool"]
    assert 0 < pool["recall"] <= 1
    assert pool["recall"] == pytest.approx(sum(pool["recall_by_source"].values()))
    assert 0 < pool["revisit_rate"] < 1  # generated like RetailRocket: visitors come back
    ranker = metrics["training"]["ranker"]
    assert 0 <= ranker["heldout_ndcg@10"] <= 1 and ranker["heldout_visitors"] > 0
    protocol = metrics["protocol"]
    assert protocol["t1"] < protocol["t2"] < protocol["end"]
    assert protocol["n_eval_visitors"] > 0
    assert {"hit_rate@20", "mrr@20", "n_steps"} <= set(metrics["session"])
    assert 0 < metrics["conformal"]["nominal"] < 1
    assert 0 <= metrics["conformal"]["empirical_coverage"] <= 1
    # recalibrated on half of the test window, beside what the training window's sets give
    assert 0 <= metrics["conformal"]["training_window"]["empirical_coverage"] <= 1
    assert metrics["conformal"]["n_calibration"] > 0
    assert (settings.data_dir / "models" / "conformal_recent.json").exists()
    reports = settings.data_dir / "reports"
    for name in ("report.md", "metrics.png", "feature_importance.png", "feature_importance.csv"):
        assert (reports / name).exists(), name

    lake = Lake.from_settings(settings)
    version = latest_version(lake)
    assert version is not None
    snapshot = Path(lake.root) / "snapshots" / version / "snapshot.duckdb"
    manifest = json.loads((snapshot.parent / "manifest.json").read_text())
    assert manifest["feature_version"].startswith("fv1_")
    assert manifest["metrics"]["models"] == metrics["models"]
    with duckdb.connect(str(snapshot), read_only=True) as con:
        tables = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
        assert set(SNAPSHOT_TABLES) <= tables
        # never a purchased or unavailable item in the published lists
        bad = con.execute(
            """
            select count(*) from recommendations
            left join items on recommendations.item_id = items.item_id
            left join interactions
                on recommendations.visitor_id = interactions.visitor_id
                and recommendations.item_id = interactions.item_id
            where not coalesce(items.is_available, true)
                or coalesce(interactions.n_purchases, 0) > 0
            """
        ).fetchone()
        assert bad == (0,)
        conf = con.execute(
            "select min(confidence), max(confidence) from recommendations"
        ).fetchone()
        assert conf is not None and 0 <= conf[0] <= conf[1] <= 1


def test_gate_refuses_a_worse_ranker_on_real_output_and_latest_stays(
    tiny_run: TinyRun, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ranker evaluated below popularity is refused, and LATEST keeps its snapshot."""
    tiny_run.copy(settings.data_dir)
    lake = Lake.from_settings(settings)
    version = latest_version(lake)
    assert version is not None
    metrics_path = settings.data_dir / "reports" / "metrics.json"
    worse = json.loads(metrics_path.read_text())
    worse["models"]["als_catboost"]["ndcg@10"] = worse["models"]["popularity"]["ndcg@10"] / 2
    metrics_path.write_text(json.dumps(worse))
    assert main(["publish"]) == 2
    assert "quality gate refused" in capsys.readouterr().out
    assert latest_version(lake) == version


def test_a_shop_where_nobody_comes_back_to_an_item(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other regime: each visitor meets each item once. The pipeline runs, the pool's
    met items reach nothing and the measured re-visit rate says why, and the gate judges the
    ranker against the plain baselines of such a shop."""
    from recsys.generate import generate

    raw = tmp_path / "never"
    generate("tiny", 3, raw, revisits="never")
    code = main(["run", "--raw-dir", str(raw), "--search-budget", "3", "--force"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    metrics = json.loads((settings.metrics_path).read_text())
    pool = metrics["pool"]
    assert pool["revisit_rate"] == 0.0
    assert pool["recall_by_source"]["revisit"] == 0.0
    assert pool["recall_by_source"]["als"] > 0
    assert pool["recall"] == pytest.approx(sum(pool["recall_by_source"].values()))
    assert "quality gate:" in out  # what the comparison with the best baseline is worth
