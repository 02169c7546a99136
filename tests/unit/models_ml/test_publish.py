"""Publishing: the quality gate, atomicity (LATEST last), verification and retention."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from models_ml.publish import KEEP, GateRefused, publish
from recsys.lake import Lake
from recsys.snapshots import SNAPSHOT_TABLES, latest_manifest, latest_version


def metrics(catboost: float, popularity: float = 0.1) -> dict:
    return {
        "models": {
            "popularity": {"ndcg@10": popularity},
            "als": {"ndcg@10": popularity},
            "als_catboost": {"ndcg@10": catboost},
        }
    }


@pytest.fixture
def snapshot_file(tmp_path: Path) -> Path:
    path = tmp_path / "build" / "snapshot.duckdb"
    path.parent.mkdir()
    with duckdb.connect(str(path)) as con:
        for table in SNAPSHOT_TABLES:
            con.execute(f"create table {table} (x integer)")
        con.execute("insert into recommendations values (1), (2)")
    return path


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_publish_writes_file_manifest_then_latest(lake: Lake, snapshot_file: Path) -> None:
    published = publish(lake, snapshot_file, {"metrics": metrics(0.3)}, now=T0)
    assert latest_version(lake) == published.version
    root = Path(lake.root) / "snapshots" / published.version
    assert (root / "snapshot.duckdb").read_bytes() == snapshot_file.read_bytes()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["sha256"] == published.manifest["sha256"]
    assert manifest["row_counts"]["recommendations"] == 2
    assert manifest["gate"] == {
        "passed": True,
        "reasons": [],
        "notes": [],
        "metric": "ndcg@10",
        "baselines": ["popularity", "popularity_unseen", "als_unseen"],
    }
    assert manifest["forced"] is False
    assert published.version.startswith("20260101T000000Z-")


def test_gate_refuses_a_model_worse_than_popularity(lake: Lake, snapshot_file: Path) -> None:
    first = publish(lake, snapshot_file, {"metrics": metrics(0.3)}, now=T0)
    with pytest.raises(GateRefused, match="below popularity"):
        publish(lake, snapshot_file, {"metrics": metrics(0.05)}, now=T0 + timedelta(hours=1))
    assert latest_version(lake) == first.version
    assert len(list((Path(lake.root) / "snapshots").iterdir())) == 2  # LATEST + first


def test_gate_compares_with_the_best_plain_baseline_and_says_when_it_is_noise() -> None:
    from models_ml.publish import gate, gate_notes

    m = metrics(0.20)
    m["models"]["popularity_unseen"] = {"ndcg@10": 0.25}
    m["models"]["als_unseen"] = {"ndcg@10": 0.15}
    assert gate(m, None) == ["als_catboost ndcg@10 0.2000 is below popularity_unseen's 0.2500"]
    m["models"]["als_catboost"]["ndcg@10"] = 0.26
    assert gate(m, None) == []
    assert gate_notes(m) == []  # no intervals, nothing to say
    m["protocol"] = {"n_eval_visitors": 71}
    m["differences"] = {"als_catboost - popularity_unseen": {"ndcg@10": [-0.02, 0.04]}}
    (note,) = gate_notes(m)
    assert "inside the noise" in note and "71 visitors" in note
    m["differences"]["als_catboost - popularity_unseen"]["ndcg@10"] = [0.004, 0.02]
    (note,) = gate_notes(m)
    assert "above popularity_unseen beyond the noise" in note
    # a metrics file from before the unseen baselines: popularity alone is the baseline
    assert gate(metrics(0.05), None) == ["als_catboost ndcg@10 0.0500 is below popularity's 0.1000"]


def test_gate_refuses_a_drop_of_more_than_5_percent(lake: Lake, snapshot_file: Path) -> None:
    first = publish(lake, snapshot_file, {"metrics": metrics(0.30)}, now=T0)
    with pytest.raises(GateRefused, match="more than 5% below the published snapshot"):
        publish(lake, snapshot_file, {"metrics": metrics(0.28)}, now=T0 + timedelta(hours=1))
    assert latest_version(lake) == first.version
    # within 5% passes
    second = publish(lake, snapshot_file, {"metrics": metrics(0.29)}, now=T0 + timedelta(hours=2))
    assert latest_version(lake) == second.version


def test_force_publishes_and_says_so(lake: Lake, snapshot_file: Path) -> None:
    published = publish(lake, snapshot_file, {"metrics": metrics(0.01)}, force=True, now=T0)
    manifest = latest_manifest(lake)
    assert manifest is not None and manifest["version"] == published.version
    assert manifest["forced"] is True
    assert manifest["gate"]["passed"] is False
    assert "below popularity" in manifest["gate"]["reasons"][0]


def test_a_failure_mid_publish_leaves_latest_untouched(
    lake: Lake, snapshot_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = publish(lake, snapshot_file, {"metrics": metrics(0.3)}, now=T0)
    real_write = Lake.write_text

    def failing_write(self: Lake, rel: str, text: str) -> None:
        if rel.endswith("manifest.json"):
            raise OSError("disk full")
        real_write(self, rel, text)

    monkeypatch.setattr(Lake, "write_text", failing_write)
    with pytest.raises(OSError, match="disk full"):
        publish(lake, snapshot_file, {"metrics": metrics(0.31)}, now=T0 + timedelta(hours=1))
    assert latest_version(lake) == first.version
    monkeypatch.undo()
    manifest = latest_manifest(lake)
    assert manifest is not None and manifest["version"] == first.version


def test_a_broken_snapshot_is_not_published(lake: Lake, tmp_path: Path) -> None:
    broken = tmp_path / "broken.duckdb"
    with duckdb.connect(str(broken)) as con:
        con.execute("create table recommendations (x integer)")
    with pytest.raises(ValueError, match="lacks tables"):
        publish(lake, broken, {"metrics": metrics(0.3)}, now=T0)
    assert latest_version(lake) is None


def test_only_the_last_snapshots_are_kept(lake: Lake, snapshot_file: Path) -> None:
    versions = [
        publish(lake, snapshot_file, {"metrics": metrics(0.3)}, now=T0 + timedelta(hours=h)).version
        for h in range(KEEP + 2)
    ]
    kept = sorted(p.name for p in (Path(lake.root) / "snapshots").iterdir() if p.is_dir())
    assert kept == versions[-KEEP:]
    assert latest_version(lake) == versions[-1]
