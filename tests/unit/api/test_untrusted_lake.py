"""What the service reads from the lake is not trusted: `LATEST`, manifests and snapshot files.

A version string is refused unless it has the publisher's own format (it names a folder, a
cache path and a response header); a snapshot's connection can touch no other file; model and
feature versions that would break a header are refused. Whatever is refused, the served
snapshot keeps serving, and health, readiness and metrics keep answering.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient

from models_ml.publish import prune
from recsys.lake import Lake
from recsys.snapshots import InvalidVersion, check_version, open_snapshot
from tests.api_snapshots import (
    default_world,
    manifest_of,
    new_version,
    publish_unchecked,
    publish_world,
    write_snapshot,
)
from tests.unit.api.conftest import metric

StartClient = Callable[..., TestClient]


def evil_versions(marker: Path, outside: Path) -> list[str]:
    return [
        # SQL: the loader once built `set temp_directory = '<cache>/<version>/.spill'`
        f"20250101T000000Z-abcdef12'; copy (select 42) to '{marker}' (format csv); --",
        str(outside / "snap"),  # absolute: the cache copy would land outside the cache
        "../../escaped-20250101T000000Z-abcdef12",
        "20250101T000000Z-abcdef12\nx-injected: 1",  # a newline would break every header
        "20250101T000000Z-abc\rdef12",
        "\uff12\uff10\uff12\uff150101T000000Z-abcdef12",  # fullwidth digits
        "20250101T000000Z-ABCDEF12",  # not what the publisher writes
    ]


def test_only_the_publishers_versions_pass() -> None:
    for good in (new_version(), "20261201T150000123Z-0123abcd", "20250101T000000Z-" + "a" * 64):
        assert check_version(good) == good
    for bad in [*evil_versions(Path("/tmp/m"), Path("/tmp/o")), "", "LATEST", "a" * 10_000]:
        with pytest.raises(InvalidVersion) as info:
            check_version(bad)
        assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_a_crafted_latest_is_refused_and_the_service_keeps_serving(
    client_for: StartClient, tmp_path: Path
) -> None:
    client = client_for(default_world(), recsys_api_cache_dir=tmp_path / "cache")
    store = client.app.state.store  # type: ignore[attr-defined]
    lake: Lake = client.app.state.lake  # type: ignore[attr-defined]
    good = client.get("/readyz").json()["snapshot_version"]
    marker, outside = tmp_path / "pwned.csv", tmp_path / "outside"
    path = write_snapshot(default_world(), Path(tempfile.mkdtemp()) / "snapshot.duckdb")
    for number, version in enumerate(evil_versions(marker, outside), start=1):
        try:  # where the lake can hold such a folder, the crafted snapshot is complete
            publish_unchecked(lake, path, version, manifest_of(default_world()))
        except OSError:
            lake.write_text("snapshots/LATEST", version + "\n")
        assert not store.refresh(), version
        assert metric(client, "recsys_snapshot_swap_failures_total", reason="version") == number
        for route in ("/healthz", "/readyz", "/metrics", "/v1/recommendations/1001"):
            response = client.get(route)
            assert response.status_code == 200, (version, route)
            assert response.headers["x-snapshot-version"] == good
        assert "not a snapshot version" in str(store.last_error)
    assert not marker.exists()
    assert not outside.exists() and not (tmp_path / "escaped-20250101T000000Z-abcdef12").exists()
    cached = {p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()}
    assert cached == {good}
    # once LATEST is right again, the service follows it
    fixed = publish_world(lake).version
    assert store.refresh()
    assert client.get("/readyz").json()["snapshot_version"] == fixed


def test_prune_deletes_only_the_publishers_folders(lake: Lake) -> None:
    for _ in range(3):
        publish_world(lake)
    root = Path(lake.root) / "snapshots"
    (root / "notes").mkdir()
    (root / "notes" / "manifest.json").write_text("{}")
    assert prune(lake, keep=1) and (root / "notes" / "manifest.json").exists()


def test_a_snapshot_connection_touches_no_other_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host data")
    path = tmp_path / "snapshot.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(f"create view leak as select content from read_text('{secret}')")
    with open_snapshot(path, threads=1) as con:
        for sql in (
            "select * from leak",
            f"copy (select 1) to '{tmp_path / 'written.csv'}'",
            f"attach '{tmp_path / 'other.duckdb'}'",
            "load httpfs",
            "set enable_external_access = true",
            "set threads = 2",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    assert not (tmp_path / "written.csv").exists()
    assert not (tmp_path / "other.duckdb").exists()


@pytest.mark.parametrize("bad", ["m1\nx-injected: 1", "m1\u2028", "", "-leading-dash", "a" * 200])
def test_a_model_version_that_is_no_name_is_refused(client_for: StartClient, bad: str) -> None:
    client = client_for(default_world())
    store = client.app.state.store  # type: ignore[attr-defined]
    good = client.get("/readyz").json()["snapshot_version"]
    world = default_world()
    world.model_version = bad
    path = write_snapshot(world, Path(tempfile.mkdtemp()) / "snapshot.duckdb")
    publish_unchecked(client.app.state.lake, path, new_version(), manifest_of(world))  # type: ignore[attr-defined]
    assert not store.refresh()
    assert metric(client, "recsys_snapshot_swap_failures_total", reason="invalid") == 1
    assert client.get("/healthz").json()["snapshot_version"] == good


@pytest.mark.parametrize(
    "change",
    [
        # a view that runs a query of its own whenever the loader reads `items`
        "create schema hidden; create table hidden.items as select * from main.items; "
        "drop table main.items; create view main.items as select * from hidden.items",
        "create macro coalesce_all(a) as a",
        "create schema extra; create table extra.t as select 1 as x",
    ],
)
def test_a_snapshot_holding_more_than_tables_is_refused(
    client_for: StartClient, change: str
) -> None:
    client = client_for(default_world())
    store = client.app.state.store  # type: ignore[attr-defined]
    path = write_snapshot(default_world(), Path(tempfile.mkdtemp()) / "snapshot.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute(change)
        con.execute("checkpoint")
    publish_unchecked(client.app.state.lake, path, new_version(), manifest_of(default_world()))  # type: ignore[attr-defined]
    assert not store.refresh()
    assert "holds more than tables" in str(store.last_error) or "lacks tables" in str(
        store.last_error
    )
    assert metric(client, "recsys_snapshot_swap_failures_total", reason="invalid") == 1


@pytest.mark.parametrize("counts", [{"items": "x"}, {"items": 1e300}, [1, 2], {"items": True}])
def test_row_counts_that_are_not_numbers_are_refused_once(
    client_for: StartClient, counts: object, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(default_world())
    store = client.app.state.store  # type: ignore[attr-defined]
    path = write_snapshot(default_world(), Path(tempfile.mkdtemp()) / "snapshot.duckdb")
    manifest = {**manifest_of(default_world()), "row_counts": counts}
    publish_unchecked(client.app.state.lake, path, new_version(), manifest)  # type: ignore[attr-defined]
    for _ in range(3):  # refused for good: not loaded, nor logged, again on every poll
        assert not store.refresh()
    assert metric(client, "recsys_snapshot_swap_failures_total", reason="invalid") == 1
    assert not any(r.exc_info for r in caplog.records)


def test_long_values_from_the_lake_make_short_log_lines(
    client_for: StartClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(default_world())
    store = client.app.state.store  # type: ignore[attr-defined]
    path = write_snapshot(default_world(), Path(tempfile.mkdtemp()) / "snapshot.duckdb")
    manifest = {**manifest_of(default_world())}
    version = publish_unchecked(client.app.state.lake, path, new_version(), manifest)  # type: ignore[attr-defined]
    lake: Lake = client.app.state.lake  # type: ignore[attr-defined]
    text = lake.read_text(f"snapshots/{version}/manifest.json")
    lake.write_text(
        f"snapshots/{version}/manifest.json",
        text.replace(f'"version": "{version}"', '"version": "' + "v" * 1_000_000 + '"'),
    )
    assert not store.refresh()
    assert len(str(store.last_error)) < 400
    assert all(len(r.getMessage()) < 600 for r in caplog.records)
