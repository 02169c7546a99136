"""kill -9 at each write point of each writer: the lake and the warehouse hold the old state or
the new one (or say they hold neither and refuse to be read), and a re-run ends where an
uninterrupted run ends.

Each writer runs as its own process (`python -m recsys.cli ...`, `recsys serve`) on a private
copy of the tiny run's data, and is killed the moment a chosen file is created or renamed into
place (inotify, `tests/fswatch.py`; never a sleep). Kills of one writer follow each other on the
state the previous kill left, so litter accumulates as on a bad day; then one uninterrupted
re-run (in this process: the same functions the command calls, without its start-up) is
compared with a reference run that was never interrupted.

After every kill:
- every Parquet file in the lake that is not a temporary file reads (temporary files are named
  so that nothing reads them, and `recsys gc` removes them);
- `raw/` equals its markers, or `check_raw` says it does not (so `recsys build` refuses it)
  until the next ingest repairs it;
- the warehouse's marts are exactly the old build's or the new build's, or the warehouse says
  it is incomplete (readers refuse it);
- `LATEST` names a snapshot whose manifest and sha256 verify.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import httpx
import pyarrow.parquet as pq
import pytest

from api.schemas import MAX_EVENTS
from models_ml.pipeline import publish_snapshot
from recsys.gc import EXPORT_TEMP_FILE, TEMP_FILE, collect
from recsys.generate import generate
from recsys.ingest import IncompleteIngest, check_raw, ingest, ingest_landing
from recsys.lake import Lake
from recsys.settings import Settings
from recsys.snapshots import latest_manifest, latest_version, sha256_file, verify_snapshot
from recsys.warehouse import IncompleteBuild, build, check_one_build
from tests import service
from tests.conftest import CLOUD_VARIABLES, TinyRun
from tests.fswatch import Watch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SKIPPED_COLUMNS = {("feature_builds", "built_at"), ("feature_builds", "invocation_id")}


# --- running and killing a writer -------------------------------------------------------------


class Writer:
    """`recsys <args>` as a process on one data dir, with its own temporary directory."""

    def __init__(self, data_dir: Path, work: Path) -> None:
        self.data_dir = data_dir
        self.tmp = work / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.logs = work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.n = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in CLOUD_VARIABLES}
        env.update(RECSYS_DATA_DIR=str(self.data_dir), TMPDIR=str(self.tmp))
        env["OPENBLAS_NUM_THREADS"] = "1"
        return env

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        self.n += 1
        log = self.logs / f"{self.n:02d}-{args[0]}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "recsys.cli", *args],
                cwd=REPO,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return process, log

    def kill_at(self, matches: Callable[[str], bool], *args: str) -> str:
        """Start `recsys <args>` and SIGKILL it at the first created file `matches` accepts."""
        with Watch(self.data_dir) as watch:
            process, log = self.start(*args)
            path = watch.kill_at(process, matches, log)
        assert process.returncode == -signal.SIGKILL, f"{args} ended before the kill at {path}"
        return path


def created(prefix: str, suffix: str = "") -> Callable[[str], bool]:
    return lambda path: path.startswith(prefix) and path.endswith(suffix)


def hidden_in(folder: str) -> Callable[[str], bool]:
    """The temporary file of an atomic write into `folder` (mid-write)."""
    return lambda path: path.startswith(folder) and Path(path).name.startswith(".")


# --- what must hold after a kill --------------------------------------------------------------


def settings_of(data_dir: Path) -> Settings:
    """Settings of a data dir with its local lake, whatever the environment says."""
    return Settings(_env_file=None, recsys_data_dir=data_dir, recsys_lake_uri=None)  # type: ignore[call-arg]


def is_temporary(path: Path) -> bool:
    return bool(TEMP_FILE.match(path.name) or EXPORT_TEMP_FILE.match(path.name))


def check_parquet_reads(lake_root: Path) -> None:
    for path in lake_root.rglob("*.parquet"):
        if not is_temporary(path):
            pq.read_table(path)  # ArrowInvalid on a truncated or empty file


def check_latest(lake: Lake, tmp: Path) -> str:
    """`LATEST` names a snapshot whose manifest exists and whose file verifies: its version."""
    version = latest_version(lake)
    assert version is not None
    manifest = latest_manifest(lake)
    assert manifest is not None and manifest["version"] == version
    copy = tmp / f"latest-{version}.duckdb"
    lake.get(f"snapshots/{version}/snapshot.duckdb", copy)
    assert sha256_file(copy) == manifest["sha256"]
    assert verify_snapshot(copy) == manifest["row_counts"]
    copy.unlink()
    return version


def table_sums(con: duckdb.DuckDBPyConnection, relation: str, name: str) -> tuple[int, int]:
    """Rows and an order-independent checksum of a relation (doubles rounded: a sum may add
    up in another order on a re-run)."""
    columns = con.execute(f"describe select * from {relation}").fetchall()
    parts = [
        f'round("{c}", 6)' if t in ("DOUBLE", "FLOAT") else f'"{c}"'
        for c, t, *_ in columns
        if (name, c) not in SKIPPED_COLUMNS
    ]
    row = con.execute(
        f"select count(*), coalesce(sum(hash({', '.join(parts)})::hugeint), 0) from {relation}"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def warehouse_image(data_dir: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    """The warehouse's build (its feature version, or 'incomplete') and every table's sums."""
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        try:
            version = check_one_build(con)
        except IncompleteBuild:
            version = "incomplete"
        tables = [
            r[0]
            for r in con.execute(
                "select table_name from duckdb_tables() where schema_name = 'main' "
                "and table_name <> 'model_builds'"
            ).fetchall()
        ]
        return version, {t: table_sums(con, f'main."{t}"', t) for t in sorted(tables)}


def snapshot_image(lake: Lake, tmp: Path) -> dict[str, tuple[int, int]]:
    version = latest_version(lake)
    copy = tmp / "image.duckdb"
    lake.get(f"snapshots/{version}/snapshot.duckdb", copy)
    with duckdb.connect(str(copy), read_only=True) as con:
        tables = [r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()]
        image = {t: table_sums(con, f'"{t}"', t) for t in sorted(tables)}
    copy.unlink()
    return image


def raw_bytes(lake_root: Path) -> dict[str, bytes]:
    root = lake_root / "raw"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not is_temporary(p)
    }


@pytest.fixture()
def base(tiny_run: TinyRun, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the tiny run's data dir: ingested, built, trained, published."""
    assert tiny_run.exit_code == 0, tiny_run.output[-3000:]
    yield tiny_run.copy(tmp_path / "data")


# --- the writers ------------------------------------------------------------------------------


def test_ingest_killed_at_each_write(base: Path, tmp_path: Path) -> None:
    """Ingest another input B over A, killed mid-put of the events file, between a table's
    files and its marker, and after a marker; each from A's state, each followed by an
    uninterrupted ingest of B, which must write what an ingest never killed writes."""
    new_input = tmp_path / "b"
    generate("tiny", 11, new_input)
    reference = Lake(str(tmp_path / "reference"))
    ingest(new_input, reference)
    points = {
        "mid-put": hidden_in("lake/raw/events/"),
        "files, no marker": created("lake/raw/rejected/events.parquet"),
        "next table's file, no marker": created("lake/raw/item_properties/item_properties"),
        "a marker": created("lake/raw/_ingest/item_properties.json"),
    }
    refused = []
    for name, point in points.items():
        data = shutil.copytree(base, tmp_path / name)
        lake = Lake(str(data / "lake"))
        writer = Writer(data, tmp_path / f"{name}-work")
        writer.kill_at(point, "ingest", "--raw-dir", str(new_input))
        check_parquet_reads(data / "lake")
        check_latest(lake, tmp_path)
        try:
            check_raw(lake)  # raw/ equals its markers ...
        except IncompleteIngest:
            refused.append(name)  # ... or says it does not, and `recsys build` refuses it
        ingest(new_input, lake)  # the uninterrupted re-run, in this process (no start-up)
        check_raw(lake)
        assert raw_bytes(data / "lake") == raw_bytes(Path(reference.root)), name
        shutil.rmtree(data)
    # a kill lands a moment after its file appears, so it may pass one more write; but the
    # kills between a table's files and its marker must have been seen as such
    assert refused, "no kill left raw/ and its markers apart"


def test_build_killed_at_each_write(base: Path, tmp_path: Path) -> None:
    """`recsys build` as of an earlier cutoff, killed mid-export of a mart and after a later
    mart's export; then built uninterrupted. The reference is the same build, never killed."""
    cutoff = "2015-08-20 00:00:00"
    old_version, old = warehouse_image(base)
    assert old_version != "incomplete"
    reference_dir = shutil.copytree(base, tmp_path / "reference")
    build(settings_of(reference_dir), cutoff_at=cutoff, echo=False)
    new_version, new = warehouse_image(reference_dir)
    assert new_version not in ("incomplete", old_version)
    writer = Writer(base, tmp_path / "work")
    features = f"lake/features/{new_version}/"
    points = [
        created(features + "tmp_sessions.parquet"),
        created(features + "interactions.parquet"),
    ]
    states = []
    for point in points:
        writer.kill_at(point, "build", "--cutoff-at", cutoff)
        check_parquet_reads(base / "lake")
        check_latest(Lake(str(base / "lake")), tmp_path)
        version, image = warehouse_image(base)
        # the old build, the new one, or a warehouse that says it is neither
        assert (version, image) in ((old_version, old), (new_version, new)) or (
            version == "incomplete"
        ), version
        states.append(version)
    assert "incomplete" in states  # a kill between two marts was recognised as such
    collect(Lake(str(base / "lake")), grace_seconds=0, temp_dir=writer.tmp)  # `recsys gc`
    assert not [p for p in (base / "lake").rglob("*") if is_temporary(p)]
    build(settings_of(base), cutoff_at=cutoff, echo=False)
    assert warehouse_image(base) == (new_version, new)
    exported = base / "lake" / "features" / new_version
    with duckdb.connect() as con:
        for path in sorted((reference_dir / "lake" / "features" / new_version).glob("*.parquet")):
            relation = f"read_parquet('{exported / path.name}')"
            assert table_sums(con, relation, path.stem) == table_sums(
                con, f"read_parquet('{path}')", path.stem
            ), path.name


def test_publish_killed_at_each_write(base: Path, tmp_path: Path) -> None:
    """`recsys publish` killed mid-put of the snapshot file and after its manifest, before
    `LATEST`; LATEST keeps naming the old snapshot, gc removes the unfinished folders, and a
    re-run publishes what the uninterrupted run published.

    Between the manifest and `LATEST` the publisher has a few milliseconds; on a loaded machine
    the kill can land after `LATEST` was replaced (seen once). LATEST then names the complete
    new snapshot, which is as good: it never names an unfinished one (`check_latest`)."""
    lake = Lake(str(base / "lake"))
    before = check_latest(lake, tmp_path)
    published = snapshot_image(lake, tmp_path)
    writer = Writer(base, tmp_path / "work")
    points = [hidden_in("lake/snapshots/2"), created("lake/snapshots/2", "/manifest.json")]
    for point in points:
        writer.kill_at(point, "publish", "--force")
        check_parquet_reads(base / "lake")
        latest = check_latest(lake, tmp_path)  # whole and verified, whatever it names
        assert latest == before or snapshot_image(lake, tmp_path) == published, latest
    folders = [p for p in (base / "lake" / "snapshots").iterdir() if p.is_dir()]
    assert any(not (p / "manifest.json").exists() for p in folders)  # what the kills left
    collect(lake, grace_seconds=0, temp_dir=writer.tmp)
    assert not [p for p in (base / "lake").rglob("*") if is_temporary(p)]
    folders = [p for p in (base / "lake" / "snapshots").iterdir() if p.is_dir()]
    assert all((p / "manifest.json").exists() for p in folders)
    publish_snapshot(settings_of(base), say=lambda _message: None, force=True)
    assert check_latest(lake, tmp_path) != before
    assert snapshot_image(lake, tmp_path) == published


def test_event_posting_killed_mid_write(base: Path, tmp_path: Path) -> None:
    """The service killed while it writes a batch of events: nothing partial is ingested, a 202
    is only ever given for a batch that landed whole, and the batch sent again (same
    Idempotency-Key) to a restarted service lands once.

    The kill is sent when the write's temporary file appears; a writer can still finish the
    rename, and even answer, before the signal lands (seen a few times in many runs). The batch
    is the largest a request may carry, so that is rare, and every outcome is checked."""
    writer = Writer(base, tmp_path / "work")
    lake = Lake(str(base / "lake"))
    events = [
        {"timestamp": 1442000000000 + i, "visitorid": 9_000_001, "event": "view", "itemid": 1 + i}
        for i in range(MAX_EVENTS)
    ]
    headers = {"Idempotency-Key": "crash-test-batch-1"}

    def serve(name: str) -> tuple[subprocess.Popen[bytes], str, Path]:
        log = writer.logs / f"{name}.log"
        process, url = service.start(writer.env(), log)
        return process, url, log

    # the service makes the landing folder on its first write; made here, so that the watch
    # is on it before the write (a folder made later is watched from when it is seen)
    (base / "lake" / "landing" / "events").mkdir(parents=True, exist_ok=True)
    process, url, log = serve("serve-killed")
    # the post waits on the service: it is sent from a thread while this one watches
    with Watch(base) as watch, httpx.Client(timeout=30) as client:
        request = client.build_request("POST", f"{url}/v1/events", json=events, headers=headers)
        answer: list[object] = []

        def post() -> None:
            try:
                answer.append(client.send(request).status_code)
            except httpx.TransportError as exc:
                answer.append(exc)

        sender = threading.Thread(target=post)
        sender.start()
        watch.kill_at(process, hidden_in("lake/landing/events/"), log)
        sender.join(30)
    assert process.returncode == -signal.SIGKILL
    assert answer, "the post neither answered nor failed"
    acknowledged = answer[0] == 202
    assert acknowledged or isinstance(answer[0], httpx.TransportError), answer
    report = ingest_landing(lake, tmp_path / "landing-scratch", lambda _m: None, 2**62)
    # the half-written batch is never read; an acknowledged one is read whole. Unacknowledged,
    # it is none or all of it: the kill can land after the rename but before the answer (seen
    # on a clean clone's run), which the client's retry with the same key must not double
    landed = 0 if report is None else report.raw_rows
    assert landed in (0, len(events)), (answer, landed)
    assert landed == len(events) or not acknowledged, (answer, landed)
    check_parquet_reads(base / "lake")
    process, url, _ = serve("serve-again")
    try:
        for _ in range(2):  # sent again, twice: lands once
            assert httpx.post(f"{url}/v1/events", json=events, headers=headers).status_code == 202
    finally:
        service.stop(process)
    report = ingest_landing(lake, tmp_path / "landing-scratch", lambda _m: None, 2**62)
    # once in all: nothing new when the killed post had landed it already
    assert (report.accepted if report else 0) == len(events) - landed, report
    check_parquet_reads(base / "lake")
    collect(lake, grace_seconds=0, temp_dir=writer.tmp)
    assert not [p for p in (base / "lake").rglob("*") if is_temporary(p)]


def impression_line(n: int) -> str:
    import json

    return json.dumps(
        {
            "impression_id": f"{n:032x}",
            "served_at": 1_700_000_000_000 + n,
            "visitor_id": n,
            "route": "visitor",
            "strategy": "personalized",
            "policy": "interleave:ranker,als",
            "experiment": "e",
            "variant": "v",
            "snapshot_version": "20260101T000000Z-0123abcd",
            "model_version": "m1",
            "anchor_item_id": None,
            "items": [{"item_id": n, "rank": 1, "source": "ranker", "team": "als"}],
        }
    )


EVENTS_HEADER = "timestamp,visitorid,event,itemid,transactionid,impression_id"
LANDED = {  # what the API may land: two files each with a bad line; the second repeats the first
    "impressions": {
        "20260101T000000000000Z-000000000000000a.jsonl": [
            impression_line(1),
            impression_line(2),
            "{}",
        ],
        "20260101T000001000000Z-000000000000000b.jsonl": [
            impression_line(2),
            impression_line(3),
            "not json",
        ],
    },
    "events": {
        "20260101T000000000000Z-000000000000000a.csv": [
            EVENTS_HEADER,
            "1442000000000,9000001,view,1,,",
            "1442000000001,9000001,view,1,,",
            "1442000000001,9000001,view,1,,",  # an exact duplicate, in its own file
        ],
        "key-0000000000000000000000000000000b.csv": [
            "timestamp,visitorid,event,itemid,transactionid",  # an older API's header
            "1442000000000,9000001,view,1,",  # the same event as another file's: both kept
            "1442000000002,9000001,transaction,2,",
        ],
    },
}


def chunks_named_alike(image: dict[str, bytes]) -> dict[str, bytes]:
    """`raw_bytes` with every chunk id (new on each run) spelt the same."""
    return {re.sub(r"chunk-[0-9TZ]+-[0-9a-f]+", "chunk", k): v for k, v in image.items()}


@pytest.mark.parametrize("kind", ["impressions", "events"])
def test_landing_ingest_killed_at_each_write(tiny_raw: Path, tmp_path: Path, kind: str) -> None:
    """`recsys ingest` killed while it takes the files the API landed: at a claim, mid-write of
    the chunk's manifest, mid-put of its part, after the part, after the rejected lines (the
    part written, nothing moved yet), after a move to `_ingested/`. The uninterrupted re-run
    must end as an ingest never killed: the same raw/ bytes (every row once, none of a
    half-done chunk taken for a batch sent twice), nothing left waiting."""
    files = LANDED[kind]
    raw_dir = {"events": "raw/events", "impressions": "raw/impressions"}[kind]
    rejected = {"events": "raw/rejected/landed-", "impressions": "raw/rejected/impressions-landed-"}

    def prepared(name: str) -> Path:
        data = tmp_path / kind / name / "data"
        lake = Lake(str(data / "lake"))
        ingest(tiny_raw, lake)
        landing = data / "lake" / "landing" / kind
        landing.mkdir(parents=True)
        for file_name, lines in files.items():
            (landing / file_name).write_text("\n".join(lines) + "\n")
        return data

    reference = prepared("reference")
    ingest(tiny_raw, Lake(str(reference / "lake")))
    expected = chunks_named_alike(raw_bytes(reference / "lake"))
    assert f"{raw_dir.removeprefix('raw/')}/landed-chunk.parquet" in expected
    assert f"{rejected[kind].removeprefix('raw/')}chunk.parquet" in expected
    points = {
        "a claim": created(f"lake/landing/{kind}/_claimed/"),
        "the manifest": created(f"lake/landing/{kind}/_chunks/"),
        "mid-put of a part": hidden_in(f"lake/{raw_dir}/"),
        "a part": created(f"lake/{raw_dir}/landed-"),
        "the rejected lines": created(f"lake/{rejected[kind]}"),
        "a move": created(f"lake/landing/{kind}/_ingested/"),
    }
    for name, point in points.items():
        data = prepared(name)
        Writer(data, tmp_path / f"{name}-work").kill_at(point, "ingest", "--raw-dir", str(tiny_raw))
        check_parquet_reads(data / "lake")
        ingest(tiny_raw, Lake(str(data / "lake")))
        assert chunks_named_alike(raw_bytes(data / "lake")) == expected, name
        landing = data / "lake" / "landing" / kind
        assert not list(landing.glob("*.*")) and not list(landing.glob("_claimed/*")), name
        assert not [p for p in landing.glob("_chunks/*") if not is_temporary(p)], name
        assert len(list(landing.glob("_ingested/*.*"))) == len(files), name
