"""The lake on S3: a real SeaweedFS server on 127.0.0.1 (signatures checked), started here."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest
import s3fs

from recsys.ingest import ingest
from recsys.lake import Lake, LakeError
from recsys.settings import Settings
from recsys.warehouse import BuildError, build
from tests.s3server import SeaweedS3

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_settings(
    seaweed_s3: SeaweedS3, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    for name, value in seaweed_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECSYS_LAKE_URI", f"s3://{s3_bucket}/shop")
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_ingest_and_build_on_s3(
    tiny_raw: Path, s3_settings: Settings, seaweed_s3: SeaweedS3
) -> None:
    lake = Lake.from_settings(s3_settings)
    assert lake.is_s3
    reports = {r.table: r for r in ingest(tiny_raw, lake)}
    assert reports["events"].accepted > 0
    fs = s3fs.S3FileSystem(**seaweed_s3.s3fs_options(), use_listings_cache=False)
    bucket = s3_settings.lake_uri.removeprefix("s3://")
    assert fs.exists(f"{bucket}/raw/events/events.parquet")
    assert fs.exists(f"{bucket}/raw/rejected/events.parquet")
    # nothing was written locally but the warehouse file
    assert not (s3_settings.data_dir / "lake").exists()

    build(s3_settings)
    with duckdb.connect(str(s3_settings.warehouse_path), read_only=True) as con:
        n_events = con.execute("select count(*) from events").fetchone()
        version = con.execute("select feature_version from feature_builds").fetchone()
    assert n_events == (reports["events"].accepted,)
    assert version is not None
    exported = fs.glob(f"{bucket}/features/{version[0]}/*.parquet")
    assert any(p.endswith("/interactions.parquet") for p in exported)
    # the exported features read back through the same fsspec route dbt used
    con = duckdb.connect()
    con.register_filesystem(fs)
    n = con.execute(
        f"select count(*) from read_parquet('s3://{bucket}/features/{version[0]}/sessions.parquet')"
    ).fetchone()
    with duckdb.connect(str(s3_settings.warehouse_path), read_only=True) as warehouse:
        assert n == warehouse.execute("select count(*) from sessions").fetchone()


def test_a_wrong_secret_is_a_clear_error(
    tiny_raw: Path, s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(tiny_raw, Lake.from_settings(s3_settings))  # the right secret first
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong = Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(LakeError, match=r"refused the credentials.*AWS_SECRET_ACCESS_KEY"):
        ingest(tiny_raw, Lake.from_settings(wrong))
    # the build looks for raw events before dbt starts: the lake's own clear error
    with pytest.raises((LakeError, BuildError), match="refused the credentials"):
        build(wrong)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "not-the-secret"


def test_publish_a_snapshot_to_s3(
    s3_settings: Settings, seaweed_s3: SeaweedS3, tmp_path: Path
) -> None:
    from models_ml.publish import publish
    from recsys.snapshots import SNAPSHOT_TABLES, latest_manifest, latest_version

    snapshot = tmp_path / "snapshot.duckdb"
    with duckdb.connect(str(snapshot)) as con:
        for table in SNAPSHOT_TABLES:
            con.execute(f"create table {table} (x integer)")
    lake = Lake.from_settings(s3_settings)
    metrics = {"models": {"popularity": {"ndcg@10": 0.1}, "als_catboost": {"ndcg@10": 0.2}}}
    published = publish(lake, snapshot, {"metrics": metrics})
    assert latest_version(lake) == published.version
    manifest = latest_manifest(lake)
    assert manifest is not None and manifest["sha256"] == published.manifest["sha256"]
    fs = s3fs.S3FileSystem(**seaweed_s3.s3fs_options(), use_listings_cache=False)
    bucket = s3_settings.lake_uri.removeprefix("s3://")
    assert fs.cat(f"{bucket}/snapshots/LATEST").decode().strip() == published.version
    assert (
        fs.size(f"{bucket}/snapshots/{published.version}/snapshot.duckdb")
        == snapshot.stat().st_size
    )


def test_landed_events_are_claimed_and_moved_on_s3(
    s3_settings: Settings, seaweed_s3: SeaweedS3, tmp_path: Path
) -> None:
    from api.events import land, to_csv
    from recsys.ingest import CLAIMED_DIR, INGESTED_DIR, LANDING_DIR, ingest_landing

    lake = Lake.from_settings(s3_settings)
    # Lake.move on S3: a copy then a delete, replacing the target
    lake.write_text(f"{LANDING_DIR}/a.csv", "new")
    lake.write_text(f"{INGESTED_DIR}/a.csv", "old")
    lake.move(f"{LANDING_DIR}/a.csv", f"{INGESTED_DIR}/a.csv")
    assert lake.read_bytes(f"{INGESTED_DIR}/a.csv") == b"new"
    assert not lake.exists(f"{LANDING_DIR}/a.csv")
    with pytest.raises(FileNotFoundError):  # gone: another ingest took it
        lake.move(f"{LANDING_DIR}/a.csv", f"{CLAIMED_DIR}/a.csv")
    with pytest.raises(FileNotFoundError):
        lake.read_bytes(f"{LANDING_DIR}/a.csv")

    # a claim a stopped ingest from before chunks left, with the part it wrote for it, and a
    # file waiting: both end in raw/ once, in one chunk's part, and in `_ingested/`
    rows = [
        (1430622700000, 5, "view", 12, None, "0123456789abcdef0123456789abcdef"),
        (1430622720000, 5, "transaction", 12, 99, None),
    ]
    land(lake, "key-a", to_csv(rows[:1]))
    lake.write_text(f"{CLAIMED_DIR}/key-b.csv", to_csv(rows[1:]))
    old_part = tmp_path / "old.parquet"
    duckdb.sql(f"copy (select 1430622720000 as timestamp) to '{old_part}' (format parquet)")
    lake.put(old_part, "raw/events/landed-key-b.parquet")
    assert lake.glob(f"{LANDING_DIR}/*.csv") == [f"{LANDING_DIR}/key-a.csv"]
    report = ingest_landing(lake, tmp_path / "work")
    assert report is not None
    assert (report.files, report.accepted, report.rejected) == (["key-a.csv", "key-b.csv"], 2, 0)
    fs = s3fs.S3FileSystem(**seaweed_s3.s3fs_options(), use_listings_cache=False)
    root = s3_settings.lake_uri.removeprefix("s3://")
    assert sorted(p.removeprefix(f"{root}/") for p in fs.find(f"{root}/landing")) == [
        f"{INGESTED_DIR}/a.csv",
        f"{INGESTED_DIR}/key-a.csv",
        f"{INGESTED_DIR}/key-b.csv",
    ]
    parts = [p.rsplit("/", 1)[-1] for p in fs.find(f"{root}/raw/events")]
    assert len(parts) == 1 and parts[0].startswith("landed-chunk-"), parts
    landed = lake.duckdb().execute(
        f"select * from read_parquet('{lake.url('raw/events/landed-*.parquet')}') order by 1"
    )
    assert landed.fetchall() == rows  # the impression id kept
    # the same bytes landed again under the key (two retries racing: S3 has no lock): once
    land(lake, "key-a", to_csv(rows[:1]))
    again = ingest_landing(lake, tmp_path / "again")
    assert again is not None and (again.files, again.accepted) == (["key-a.csv"], 0)
    assert len(lake.glob("raw/events/*.parquet")) == 1


def test_landed_impressions_are_claimed_checked_and_moved_on_s3(
    s3_settings: Settings, seaweed_s3: SeaweedS3, tmp_path: Path
) -> None:
    import json

    from recsys.ingest import (
        IMPRESSIONS_CLAIMED_DIR,
        IMPRESSIONS_INGESTED_DIR,
        IMPRESSIONS_LANDING_DIR,
        ingest_landing_impressions,
    )

    def line(n: int) -> str:
        return json.dumps(
            {
                "impression_id": f"{n:032x}",
                "served_at": 1_767_225_600_000 + n,
                "visitor_id": n,
                "route": "visitor",
                "strategy": "popular",
                "policy": "popularity",
                "experiment": None,
                "variant": None,
                "snapshot_version": "20260101T000000Z-0123abcd",
                "model_version": "m1",
                "anchor_item_id": None,
                "items": [{"item_id": 5, "rank": 1, "source": "popular", "team": None}],
            }
        )

    lake = Lake.from_settings(s3_settings)
    # a claim a stopped ingest left, and a file waiting that repeats one of its impressions
    lake.write_text(f"{IMPRESSIONS_CLAIMED_DIR}/a.jsonl", f"{line(1)}\n{line(2)}\n")
    lake.write_text(f"{IMPRESSIONS_LANDING_DIR}/b.jsonl", f"{line(2)}\n{line(3)}\nnot json\n")
    report = ingest_landing_impressions(lake, tmp_path / "work", max_timestamp_ms=2**62)
    assert report is not None
    assert (report.files, report.accepted, report.rejected) == (["a.jsonl", "b.jsonl"], 3, 2)
    assert report.reasons == {"duplicate impression_id": 1, "not JSON": 1}
    fs = s3fs.S3FileSystem(**seaweed_s3.s3fs_options(), use_listings_cache=False)
    root = s3_settings.lake_uri.removeprefix("s3://")
    assert sorted(p.removeprefix(f"{root}/") for p in fs.find(f"{root}/landing")) == [
        f"{IMPRESSIONS_INGESTED_DIR}/a.jsonl",
        f"{IMPRESSIONS_INGESTED_DIR}/b.jsonl",
    ]
    con = lake.duckdb()
    ids = con.execute(
        f"select impression_id from read_parquet('{lake.url('raw/impressions/*.parquet')}')"
    ).fetchall()
    assert sorted(i for (i,) in ids) == [f"{n:032x}" for n in (1, 2, 3)]
    # the same batch again, under another name: the ids in raw/ on S3 are seen
    lake.write_text(f"{IMPRESSIONS_LANDING_DIR}/c.jsonl", f"{line(1)}\n")
    again = ingest_landing_impressions(lake, tmp_path / "again", max_timestamp_ms=2**62)
    assert again is not None
    assert (again.accepted, again.reasons) == (0, {"duplicate impression_id": 1})
