"""Loading, swapping and refusing snapshots; what the service says without one."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from api import recommend
from api.store import SnapshotStore
from recsys.lake import Lake
from recsys.snapshots import latest_version
from tests.api_snapshots import (
    World,
    default_world,
    manifest_of,
    new_version,
    publish_unchecked,
    publish_world,
    write_snapshot,
)
from tests.unit.api.conftest import metric

StartClient = Callable[..., TestClient]


def store_of(client: TestClient) -> SnapshotStore:
    store: SnapshotStore = client.app.state.store  # type: ignore[attr-defined]
    return store


def lake_of(client: TestClient) -> Lake:
    lake: Lake = client.app.state.lake  # type: ignore[attr-defined]
    return lake


def served(client: TestClient) -> str | None:
    return client.get("/readyz").json()["snapshot_version"]


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def world(model_version: str) -> World:
    w = default_world()
    w.model_version = model_version
    return w


def broken_file(change: str, w: World | None = None) -> Path:
    """A snapshot file with one SQL change applied after it was written."""
    path = Path(tempfile.mkdtemp()) / "snapshot.duckdb"
    write_snapshot(w or default_world(), path)
    with duckdb.connect(str(path)) as con:
        con.execute(change)
        con.execute("checkpoint")
    return path


def test_without_a_snapshot_v1_answers_503_and_readyz_says_why(client_for: StartClient) -> None:
    client = client_for(None)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not ready"
    assert "no snapshot published yet" in ready.json()["detail"]
    lake_root = str(lake_of(client).root)
    assert lake_root not in ready.json()["detail"]  # paths are the operator's, in the log
    for response in (
        client.get("/v1/recommendations/1"),
        client.post("/v1/recommendations", json={"visitor_id": 1}),
        client.get("/v1/items/1/similar"),
    ):
        assert response.status_code == 503
        assert "no snapshot is loaded yet" in response.json()["detail"]
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "snapshot_version": None, "model_version": None}
    # bad input is still a 422, not a 503: the request is wrong whatever is loaded
    assert client.get("/v1/recommendations/x").status_code == 422


def test_start_up_loads_latest(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert body["snapshot_version"] == latest_version(lake_of(client))
    assert body["model_version"] == "fv1_test-catboost-42"
    assert body["feature_version"] == "fv1_test"
    assert body["cutoff_at"] == "2015-09-18T02:59:47Z"
    assert body["snapshot_age_seconds"] > 10 * 365 * 86400
    assert metric(client, "recsys_snapshot_age_seconds") > 10 * 365 * 86400
    info = {"version": body["snapshot_version"], "model_version": body["model_version"]}
    assert metric(client, "recsys_snapshot_info", **info) == 1


def test_the_poller_swaps_in_a_newer_snapshot(client_for: StartClient) -> None:
    client = client_for(world("m1"), recsys_api_poll_seconds=0.05)
    first = served(client)
    lake = lake_of(client)
    second = publish_world(lake, world("m2")).version
    wait_for(lambda: served(client) == second)
    response = client.get("/v1/recommendations/1001")
    assert response.json()["model_version"] == "m2"
    assert response.json()["snapshot_version"] == second != first
    assert metric(client, "recsys_snapshot_swaps_total") == 2
    assert metric(client, "recsys_snapshot_info", version=second, model_version="m2") == 1
    assert metric(client, "recsys_snapshot_info", version=first, model_version="m1") == 0


def test_a_request_keeps_the_snapshot_it_started_with(client_for: StartClient) -> None:
    client = client_for(world("m1"))
    store = store_of(client)
    old = store.current
    assert old is not None
    recommend.for_visitor(old, 1001, 5)
    publish_world(lake_of(client), world("m2"))
    assert store.refresh()
    new = store.current
    assert new is not None and new is not old and new.model_version == "m2"
    # the old one still answers for whoever holds it; each has its own cache
    assert recommend.for_visitor(old, 1001, 3).item_ids == [1, 2, 3]
    assert new.cache is not old.cache and len(new.cache) == 0


def test_a_swap_frees_the_old_snapshot_itself_once_requests_let_go(
    client_for: StartClient,
) -> None:
    """Unmapping a large snapshot takes tens of milliseconds: the refresh waits for requests
    still holding the old one and frees it in its own thread, not in the last request's."""
    client = client_for(world("m1"))
    store = store_of(client)
    old = store.current
    assert old is not None
    freed_in: list[int] = []
    weakref.finalize(old, lambda: freed_in.append(threading.get_ident()))
    held = threading.Event()

    def request() -> None:  # a request in flight on the old snapshot, ending after the swap
        snapshot = store.current
        held.set()
        wait_for(lambda: store.current is not snapshot)
        time.sleep(0.1)
        assert snapshot is not None and snapshot.model_version == "m1"

    in_flight = threading.Thread(target=request)
    in_flight.start()
    held.wait()
    del old
    publish_world(lake_of(client), world("m2"))
    assert store.refresh()
    in_flight.join()
    assert freed_in == [threading.get_ident()]


def test_a_corrupted_file_is_refused_and_the_old_one_keeps_serving(
    client_for: StartClient,
) -> None:
    client = client_for(world("m1"))
    store, lake = store_of(client), lake_of(client)
    good = served(client)
    bad = publish_world(lake, world("m2")).version
    path = Path(lake.root) / "snapshots" / bad / "snapshot.duckdb"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not store.refresh()
    assert served(client) == good
    assert client.get("/v1/recommendations/1001").json()["model_version"] == "m1"
    assert metric(client, "recsys_snapshot_swap_failures_total", reason="checksum") == 1
    assert "sha256" in str(store.last_error)
    assert not store.refresh()  # remembered: not downloaded, not counted again
    assert metric(client, "recsys_snapshot_swap_failures_total", reason="checksum") == 1
    fixed = publish_world(lake, world("m3")).version
    assert store.refresh() and served(client) == fixed


def test_a_half_written_snapshot_is_refused_until_it_is_complete(
    client_for: StartClient,
) -> None:
    client = client_for(world("m1"))
    store, lake = store_of(client), lake_of(client)
    good = served(client)
    version = publish_unchecked(lake, None, new_version())  # LATEST, and nothing else yet
    assert not store.refresh()
    assert served(client) == good
    assert metric(client, "recsys_snapshot_swap_failures_total", reason="manifest") == 1
    path = write_snapshot(world("m2"), Path(tempfile.mkdtemp()) / "snapshot.duckdb")
    publish_unchecked(lake, path, version, manifest_of(world("m2")))
    assert store.refresh()
    assert served(client) == version


def refused(client: TestClient, path: Path | None, manifest: dict, reason: str) -> str:
    """Publish `path` without checks and show it is refused for `reason`; the error text."""
    store, lake = store_of(client), lake_of(client)
    good = served(client)
    before = metric(client, "recsys_snapshot_swap_failures_total", reason=reason)
    publish_unchecked(lake, path, new_version(), manifest)
    assert not store.refresh()
    assert served(client) == good
    assert client.get("/v1/recommendations/1001").status_code == 200
    assert metric(client, "recsys_snapshot_swap_failures_total", reason=reason) == before + 1
    return str(store.last_error)


def test_broken_snapshots_are_refused(client_for: StartClient) -> None:
    client = client_for(world("m1"))
    manifest = manifest_of(default_world())
    error = refused(client, broken_file("drop table similar_items"), manifest, "invalid")
    assert "lacks tables: similar_items" in error
    error = refused(client, broken_file("alter table items drop column price"), manifest, "invalid")
    assert "items lacks columns: price" in error
    error = refused(
        client, broken_file("delete from metadata where key = 'cutoff_at'"), manifest, "invalid"
    )
    assert "metadata lacks cutoff_at" in error
    error = refused(
        client, broken_file("update ranker set model = 'not a model'"), manifest, "invalid"
    )
    assert "the ranker cannot be loaded" in error
    null_item = "update popular_items set item_id = null where category_id is not null and rank = 2"
    error = refused(client, broken_file(null_item), manifest, "invalid")
    assert "popular_items: an item_id is null" in error
    counts = {"recommendations": 1}
    error = refused(client, broken_file("select 1"), {**manifest, "row_counts": counts}, "invalid")
    assert "row counts differ from the manifest" in error
    path = broken_file("select 1")
    error = refused(client, path, {**manifest, "version": "someone else"}, "manifest")
    assert "manifest.json names version 'someone else'" in error
    garbage = Path(tempfile.mkdtemp()) / "snapshot.duckdb"
    garbage.write_bytes(b"this is not a database")
    assert refused(client, garbage, manifest, "invalid")


def test_a_model_needing_a_feature_the_service_lacks_is_refused(client_for: StartClient) -> None:
    from catboost import CatBoostRanker, Pool

    client = client_for(world("m1"))
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"als_score": rng.normal(size=40), "mystery": rng.normal(size=40)})
    model = CatBoostRanker(iterations=5, allow_writing_files=False, verbose=False)
    model.fit(Pool(frame, label=rng.integers(0, 2, 40), group_id=np.repeat(np.arange(4), 10)))
    blob = Path(tempfile.mkdtemp()) / "m.cbm"
    model.save_model(str(blob))
    path = broken_file("select 1")
    with duckdb.connect(str(path)) as con:
        con.execute("update ranker set model = ?, metadata = ?", [blob.read_bytes(), "{}"])
    error = refused(client, path, manifest_of(default_world()), "invalid")
    assert "needs features this service cannot compute: mystery" in error


def test_moving_latest_back_rolls_back(client_for: StartClient) -> None:
    client = client_for(world("m1"))
    store, lake = store_of(client), lake_of(client)
    first = served(client)
    publish_world(lake, world("m2"))
    assert store.refresh()
    lake.write_text("snapshots/LATEST", f"{first}\n")
    assert store.refresh()
    assert served(client) == first
    assert client.get("/v1/recommendations/1001").json()["model_version"] == "m1"


def test_a_restart_loads_the_cached_copy(client_for: StartClient, tmp_path: Path) -> None:
    client = client_for(world("m1"), recsys_api_cache_dir=tmp_path / "cache")
    version = served(client)
    lake = lake_of(client)
    cached = tmp_path / "cache" / str(version) / "snapshot.duckdb"
    assert cached.exists()
    client.__exit__(None, None, None)
    (Path(lake.root) / "snapshots" / str(version) / "snapshot.duckdb").unlink()  # lake copy gone
    again = TestClient(client.app)
    with again:
        assert served(again) == version


def test_old_cached_copies_are_pruned(client_for: StartClient, tmp_path: Path) -> None:
    client = client_for(world("m1"), recsys_api_cache_dir=tmp_path / "cache")
    store, lake = store_of(client), lake_of(client)
    for name in ("m2", "m3", "m4"):
        publish_world(lake, world(name))
        assert store.refresh()
    kept = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert len(kept) == 2 and served(client) in kept


def test_the_manifest_of_the_served_version_is_kept(client: TestClient) -> None:
    store = store_of(client)
    assert store.current is not None
    manifest = json.loads(
        lake_of(client).read_text(f"snapshots/{store.current.version}/manifest.json")
    )
    assert store.current.manifest["sha256"] == manifest["sha256"]
