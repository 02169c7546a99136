"""Parts of a snapshot loaded by a worker process (`api.load_worker`): the same snapshot as one
loaded in this process, its arrays mapped from the worker's files; an invalid snapshot refused
with the same message; nothing but the snapshot's own types read back from the worker."""

from __future__ import annotations

import io
import mmap
import os
import pickle
from dataclasses import fields
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from api import load_worker, loader, recommend
from api import store as store_module
from api.snapshot import Groups, Items, Snapshot, SnapshotInvalid
from tests.api_snapshots import default_world, manifest_of, write_snapshot
from tests.unit.api.test_snapshot_cache import make_store, republish


def _mapped(array: np.ndarray) -> bool:
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base is not None


def _arrays(value: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array of a snapshot (or part of one) by its path."""
    if isinstance(value, np.ndarray):
        return {prefix: value}
    if isinstance(value, Groups | Items):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        found: dict[str, np.ndarray] = {}
        for key, item in value.items():
            found.update(_arrays(item, f"{prefix}.{key}"))
        return found
    if isinstance(value, tuple):
        found = {}
        for i, item in enumerate(value):
            found.update(_arrays(item, f"{prefix}[{i}]"))
        return found
    return {}


def _snapshot_arrays(snapshot: Snapshot) -> dict[str, np.ndarray]:
    skip = {"ranker", "cache", "similar_cache", "manifest", "metadata"}
    return _arrays(
        {f.name: getattr(snapshot, f.name) for f in fields(snapshot) if f.name not in skip}
    )


@pytest.fixture
def snapshot_file(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    world = default_world()
    return write_snapshot(world, tmp_path / "snap" / "snapshot.duckdb"), manifest_of(world)


@pytest.mark.parametrize("away", [loader.PARTS, ("visitors",), ("catalogue", "lists")])
def test_parts_from_a_worker_are_the_snapshot_loaded_here(
    snapshot_file: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    away: tuple[str, ...],
) -> None:
    """Every array in a file and the tables read three rows at a time, in both processes (the
    worker is told this process's settings): the loaded snapshot has the same arrays, values
    and types as one loaded here without files, the large ones mapped read-only, the same
    ranker, and no file is left."""
    path, manifest = snapshot_file
    here = loader.load(path, manifest)
    monkeypatch.setattr(loader, "KEEP_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(loader, "READ_BATCH_ROWS", 3)
    files = tmp_path / "files"
    split = load_worker.load(path, manifest, files, away=away, nice=1)

    expected, actual = _snapshot_arrays(here), _snapshot_arrays(split)
    assert sorted(actual) == sorted(expected)
    for name, values in expected.items():
        assert actual[name].dtype == values.dtype, name
        np.testing.assert_array_equal(actual[name], values, err_msg=name)
    mapped = [name for name, values in actual.items() if _mapped(values)]
    assert len(mapped) > 20
    assert all(not actual[name].flags.writeable for name in mapped)
    assert split.max_als_rank == here.max_als_rank
    assert split.metadata == here.metadata and split.cutoff_at == here.cutoff_at
    assert split.ranker.features == here.ranker.features
    for visitor in [*here.recs.keys[:10].tolist(), -1]:
        a = recommend.for_visitor(split, int(visitor), 10)
        b = recommend.for_visitor(here, int(visitor), 10)
        assert (a.item_ids, a.scores) == (b.item_ids, b.scores)
    candidate = int(here.candidates.keys[0])
    a = recommend.for_session(split, candidate, [], 10)
    b = recommend.for_session(here, candidate, [], 10)
    assert (a.item_ids, a.scores) == (b.item_ids, b.scores)  # the ranker, on both
    assert list(files.iterdir()) == []


def test_an_invalid_snapshot_is_refused_by_the_worker_as_here(
    snapshot_file: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A visitor listed twice: the worker's refusal carries the same message."""
    path, manifest = snapshot_file
    with duckdb.connect(str(path)) as con:
        con.execute("insert into visitors select * from visitors limit 1")
    unchecked = {k: v for k, v in manifest.items() if k != "row_counts"}  # nothing to compare
    with pytest.raises(SnapshotInvalid) as here:
        loader.load(path, unchecked)
    with pytest.raises(SnapshotInvalid) as away:
        load_worker.load(path, unchecked, tmp_path / "files", away=("visitors",))
    assert "visitor_id is not unique" in str(here.value)
    assert str(away.value) == str(here.value)
    assert list((tmp_path / "files").iterdir()) == []


def test_a_worker_that_takes_too_long_is_stopped(
    snapshot_file: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = snapshot_file
    worker = load_worker.Worker(path, loader.PARTS, tmp_path)
    with pytest.raises(RuntimeError, match="took over"):
        worker.result(timeout=0.001)
    assert worker.process.poll() is not None


def _pickled(obj: Any) -> io.BytesIO:
    return io.BytesIO(pickle.dumps(obj))


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_only_the_snapshots_own_types_are_read_back(tmp_path: Path) -> None:
    """A pickle naming any other callable, or an array file by a name that is not the worker's
    own, is refused before anything is built."""
    for bad in (_Evil(), ({}, {"x": _Evil()}), ({}, {"f": print})):
        with pytest.raises(pickle.UnpicklingError, match="not a part of a snapshot"):
            load_worker._Unpickler(_pickled(bad), tmp_path).load()

    class Refer(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return obj if isinstance(obj, tuple) and obj[:1] == ("file",) else None

    for pid in (("file", "../0000.npy", "<i8", 1), ("file", "/etc/passwd", "<i8", 1)):
        buffer = io.BytesIO()
        Refer(buffer).dump(({}, {"a": pid}))
        buffer.seek(0)
        with pytest.raises(pickle.UnpicklingError, match="unknown array reference"):
            load_worker._Unpickler(buffer, tmp_path).load()
    object_array = ("data", "|O", b"")
    with pytest.raises(pickle.UnpicklingError, match="is not a column"):
        load_worker._Unpickler(io.BytesIO(), tmp_path).persistent_load(object_array)


def test_the_store_loads_large_snapshots_with_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the size floor lowered, the start-up load splits its parts with a worker and a
    swap loads every part in one; both serve what an in-process load serves."""
    store, lake, published = make_store(tmp_path)
    here = loader.load(
        tmp_path / "data" / "lake" / "snapshots" / published.version / "snapshot.duckdb",
        published.manifest,
    )
    calls: list[tuple[tuple[str, ...], int]] = []
    real = load_worker.Worker.__init__

    def counting(self: load_worker.Worker, path: Path, parts: Any, folder: Path, nice: int = 0):
        calls.append((tuple(parts), nice))
        real(self, path, parts, folder, nice)

    monkeypatch.setattr(load_worker.Worker, "__init__", counting)
    monkeypatch.setattr(store_module, "WORKER_FROM_BYTES", 0)
    assert store.refresh()
    republish(lake, published.version, "29990101T000000Z-a9a1a9a1")
    assert store.refresh()
    assert calls == [(store_module.START_AWAY, 0), (loader.PARTS, store_module.SWAP_NICE)]
    served = store.current
    assert served is not None and served.version == "29990101T000000Z-a9a1a9a1"
    for visitor in here.recs.keys[:10].tolist():
        a = recommend.for_visitor(served, int(visitor), 10)
        b = recommend.for_visitor(here, int(visitor), 10)
        assert (a.item_ids, a.scores) == (b.item_ids, b.scores)
    leftovers = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert leftovers == sorted([published.version, "29990101T000000Z-a9a1a9a1"])
