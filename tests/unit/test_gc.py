"""`recsys gc`: what killed runs left behind goes, what a running one may need stays."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from recsys.cli import main
from recsys.gc import collect
from recsys.lake import TEMP_PREFIX, Lake
from recsys.settings import Settings
from tests.api_snapshots import publish_world

HOUR = 3600.0


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_leftovers_of_killed_runs_go_and_fresh_ones_stay(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    root = Path(lake.root)
    published = publish_world(lake)
    # a publish killed after the file was put, before the manifest: an old one and a new one
    old = root / "snapshots" / "20200101T000000Z-deadbeef"
    new_version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-0badf00d"
    for folder in (old, root / "snapshots" / new_version):
        folder.mkdir(parents=True)
        (folder / "snapshot.duckdb").write_bytes(b"half")
    (root / "snapshots" / "notes").mkdir()  # not a publisher's name: never touched
    (root / "snapshots" / "notes" / "x").write_text("keep")
    # temporary files of writes killed half-way, old and fresh
    litter = {
        root / "raw" / "events" / ".events.parquet.k2j3h4_a": HOUR * 2,
        root / "landing" / "events" / ".key-abc.csv.1a2b3c4d.tmp": HOUR * 2,
        root / "snapshots" / ".LATEST.x8y7z6w5": 10.0,  # a write in progress: stays
        root / "features" / "fv1_x" / "tmp_interactions.parquet": HOUR * 2,  # a killed export
        root / "features" / "fv1_x" / "sessions.parquet": HOUR * 2,  # an export: stays
    }
    for path, seconds in litter.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
        age(path, seconds)
    scratch = tmp_path / "tmp"
    (scratch / f"{TEMP_PREFIX}abc").mkdir(parents=True)
    age(scratch / f"{TEMP_PREFIX}abc", HOUR * 3)
    (scratch / f"{TEMP_PREFIX}now").mkdir()  # a running ingest's staging
    (scratch / "someone-elses").mkdir()
    age(scratch / "someone-elses", HOUR * 3)

    done = collect(lake, grace_seconds=HOUR, temp_dir=scratch)
    assert done.snapshot_folders == ["snapshots/20200101T000000Z-deadbeef"]
    assert sorted(done.temporary_files) == [
        "features/fv1_x/tmp_interactions.parquet",
        "landing/events/.key-abc.csv.1a2b3c4d.tmp",
        "raw/events/.events.parquet.k2j3h4_a",
    ]
    assert done.scratch_folders == [str(scratch / f"{TEMP_PREFIX}abc")]
    assert not old.exists() and (root / "snapshots" / new_version).exists()
    assert (root / "snapshots" / ".LATEST.x8y7z6w5").exists()
    assert (root / "snapshots" / "notes" / "x").exists()
    assert (root / "features" / "fv1_x" / "sessions.parquet").exists()
    assert (scratch / f"{TEMP_PREFIX}now").exists() and (scratch / "someone-elses").exists()
    # the published snapshot and LATEST are untouched
    assert (root / "snapshots" / published.version / "manifest.json").exists()
    assert (root / "snapshots" / "LATEST").read_text().strip() == published.version
    assert collect(lake, grace_seconds=HOUR, temp_dir=scratch).count == 0


def test_recsys_gc_says_what_it_removed(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = settings.data_dir / "lake" / "snapshots" / "20200101T000000Z-deadbeef"
    folder.mkdir(parents=True)
    (folder / "snapshot.duckdb").write_bytes(b"half")
    assert main(["gc"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 snapshot folders without a manifest" in out and not folder.exists()
