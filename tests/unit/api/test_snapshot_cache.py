"""The local cache of snapshot files: a verified copy is not hashed again while unchanged, and
the same bytes published under another version are linked, not downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from api import store as store_module
from api.metrics import Metrics
from api.store import DIGEST_FILE, SnapshotStore
from recsys.lake import Lake
from tests.api_snapshots import publish_world
from tests.unit.api.conftest import make_settings


def republish(lake: Lake, version: str, new_version: str) -> None:
    """The same file under a new version (as the API benchmark publishes it)."""
    root = Path(lake.root) / "snapshots"
    (root / new_version).mkdir()
    os.link(root / version / "snapshot.duckdb", root / new_version / "snapshot.duckdb")
    manifest = json.loads((root / version / "manifest.json").read_text())
    manifest["version"] = new_version
    (root / new_version / "manifest.json").write_text(json.dumps(manifest))
    (root / "LATEST").write_text(new_version + "\n")


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"hash": 0, "get": 0}
    real_hash, real_get = store_module.sha256_file, Lake.get

    def sha256_file(path: Path) -> str:
        calls["hash"] += 1
        return real_hash(path)

    def get(self: Lake, rel: str, local: Path) -> None:
        calls["get"] += rel.endswith("snapshot.duckdb")
        real_get(self, rel, local)

    monkeypatch.setattr(store_module, "sha256_file", sha256_file)
    monkeypatch.setattr(Lake, "get", get)
    return calls


def make_store(tmp_path: Path) -> tuple[SnapshotStore, Lake, Any]:
    settings = make_settings(tmp_path / "data", recsys_api_cache_dir=tmp_path / "cache")
    lake = Lake.from_settings(settings)
    published = publish_world(lake)
    return SnapshotStore(lake, tmp_path / "cache", Metrics()), lake, published


def test_the_same_bytes_under_a_new_version_are_linked(
    tmp_path: Path, counted: dict[str, int]
) -> None:
    store, lake, published = make_store(tmp_path)
    assert store.refresh()
    before = dict(counted)
    republish(lake, published.version, "29990101T000000Z-a9a1a9a1")
    assert store.refresh()
    assert store.current is not None and store.current.version == "29990101T000000Z-a9a1a9a1"
    assert counted == before  # neither downloaded nor hashed again
    first = tmp_path / "cache" / published.version / "snapshot.duckdb"
    second = tmp_path / "cache" / "29990101T000000Z-a9a1a9a1" / "snapshot.duckdb"
    assert os.path.samefile(first, second)
    assert (second.parent / DIGEST_FILE).read_text().split()[0] == published.manifest["sha256"]


def test_a_verified_copy_is_hashed_again_only_once_changed(
    tmp_path: Path, counted: dict[str, int]
) -> None:
    store, lake, published = make_store(tmp_path)
    assert store.refresh()
    cached = tmp_path / "cache" / published.version / "snapshot.duckdb"
    before = dict(counted)
    # a restart: the recorded copy is used as it is
    assert SnapshotStore(lake, tmp_path / "cache", Metrics()).refresh()
    assert counted == before
    # a copy changed since (its time differs from the record): hashed, found broken, fetched
    cached.write_bytes(cached.read_bytes()[:-1] + b"x")
    restarted = SnapshotStore(lake, tmp_path / "cache", Metrics())
    assert restarted.refresh()
    assert counted == {"hash": before["hash"] + 2, "get": before["get"] + 1}
    assert restarted.current is not None and restarted.current.version == published.version
