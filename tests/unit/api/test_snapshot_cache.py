"""The local cache of snapshot files: a verified copy is not hashed again while unchanged, the
same bytes published under another version are linked, not downloaded, and a local lake's file
is linked into the cache rather than copied (a copy across file systems)."""

from __future__ import annotations

import json
import mmap
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from api import loader, recommend
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
    real_hash, real_get = store_module.sha256_file, Lake.link_or_get

    def sha256_file(path: Path) -> str:
        calls["hash"] += 1
        return real_hash(path)

    def link_or_get(self: Lake, rel: str, local: Path) -> bool:
        calls["get"] += rel.endswith("snapshot.duckdb")
        return real_get(self, rel, local)

    monkeypatch.setattr(store_module, "sha256_file", sha256_file)
    monkeypatch.setattr(Lake, "link_or_get", link_or_get)
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
    # a copy changed since (its time differs from the record): hashed, found broken, fetched.
    # Replaced, not rewritten in place: the copy is a hard link to the lake's file
    broken = cached.with_name("broken")
    broken.write_bytes(cached.read_bytes()[:-1] + b"x")
    os.replace(broken, cached)
    restarted = SnapshotStore(lake, tmp_path / "cache", Metrics())
    assert restarted.refresh()
    assert counted == {"hash": before["hash"] + 2, "get": before["get"] + 1}
    assert restarted.current is not None and restarted.current.version == published.version


def test_a_local_lake_file_is_linked_not_copied(tmp_path: Path) -> None:
    store, lake, published = make_store(tmp_path)
    assert store.refresh()
    cached = tmp_path / "cache" / published.version / "snapshot.duckdb"
    in_lake = Path(lake.root) / "snapshots" / published.version / "snapshot.duckdb"
    assert os.path.samefile(cached, in_lake)
    assert not any(p.name.endswith(".part") for p in cached.parent.iterdir())


def test_a_cache_on_another_file_system_gets_a_verified_copy(tmp_path: Path) -> None:
    """/dev/shm is a file system of its own (tmpfs): a hard link there fails, so the file is
    copied, and that copy is what is verified and served."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system other than the test's folder")
    settings = make_settings(tmp_path / "data")
    lake = Lake.from_settings(settings)
    published = publish_world(lake)
    with tempfile.TemporaryDirectory(dir=shm) as cache:
        store = SnapshotStore(lake, Path(cache), Metrics())
        assert store.refresh()
        assert store.current is not None and store.current.version == published.version
        cached = Path(cache) / published.version / "snapshot.duckdb"
        in_lake = Path(lake.root) / "snapshots" / published.version / "snapshot.duckdb"
        assert cached.read_bytes() == in_lake.read_bytes()
        assert not os.path.samefile(cached, in_lake)


def _mapped(array: np.ndarray) -> bool:
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base is not None


def test_the_served_arrays_are_mapped_read_only_and_leave_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every array kept in a file (the size floor lowered: the test snapshot is small)
    and the tables read three rows at a time, the served snapshot answers as one loaded in
    memory at once does, its arrays are read-only
    mappings, and the temporary files are gone once it is loaded, swaps included."""
    store, lake, published = make_store(tmp_path)
    in_memory = loader.load(
        tmp_path / "data" / "lake" / "snapshots" / published.version / "snapshot.duckdb",
        published.manifest,
    )
    monkeypatch.setattr(loader, "KEEP_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(loader, "READ_BATCH_ROWS", 3)  # groups and ranks across batches too
    assert store.refresh()
    served = store.current
    assert served is not None
    arrays = [served.rec_cols["item_id"], served.candidate_cols["als_score"], served.items.ids]
    arrays += [served.visitors["top_category_id"], served.recs.keys, served.recs.offsets]
    assert all(_mapped(a) and not a.flags.writeable for a in arrays)
    assert not isinstance(served.rec_cols["item_id"], np.memmap)  # plain arrays on the hot path
    for visitor in [*in_memory.recs.keys[:20].tolist(), -1]:
        mapped_answer = recommend.for_visitor(served, int(visitor), 10)
        memory_answer = recommend.for_visitor(in_memory, int(visitor), 10)
        assert mapped_answer.item_ids == memory_answer.item_ids
        assert mapped_answer.scores == memory_answer.scores
    republish(lake, published.version, "29990101T000000Z-a9a1a9a1")
    assert store.refresh()
    leftovers = [p.name for p in (tmp_path / "cache").iterdir()]
    assert sorted(leftovers) == sorted([published.version, "29990101T000000Z-a9a1a9a1"])
