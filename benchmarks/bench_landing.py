"""How fast `recsys ingest` picks up what the API lands, and what it leaves for dbt to read.

Lands N small event files in a temporary local lake, as `api/events.py` writes them (its
`to_csv` and batch ids, a file per request of 1-5 events like a shopper's session, every other
one under an Idempotency-Key as the simulator sends them), plus one impression file per
`--events-per-impression-file` event files (the log flushes far less often than requests come),
then times `ingest_all_landing` (files/s, rows/s) and a DuckDB
`select count(*) from read_parquet('<lake>/raw/events/*.parquet', union_by_name=true)` over
what it wrote, as every dbt build reads it.

    python benchmarks/bench_landing.py [--files 20000] [--seed 7] [--ingest-module PATH]

`--ingest-module` times another copy of `recsys/ingest.py` (say, the one before a change) on the
same input, so that the two can be compared on one machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.events import keyed_batch_id, new_batch_id, to_csv
from recsys.ingest import IMPRESSIONS_LANDING_DIR, LANDING_DIR
from recsys.lake import Lake, connect_duckdb

NOW_MS = 1_767_225_600_000  # 2026-01-01: every landed time is before it


def load_module(path: str | None) -> ModuleType:
    if path is None:
        import recsys.ingest

        return recsys.ingest
    spec = importlib.util.spec_from_file_location("ingest_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def impression_line(rng: random.Random, n: int, visitor: int) -> str:
    items = [
        {"item_id": rng.randrange(1, 200_000), "rank": r, "source": "ranker", "team": None}
        for r in range(1, 11)
    ]
    items = list({i["item_id"]: i for i in items}.values())
    for rank, item in enumerate(items, 1):
        item["rank"] = rank
    return json.dumps(
        {
            "impression_id": f"{rng.getrandbits(64):016x}{n:016x}",
            "served_at": NOW_MS - 3_600_000 + n % 3_600_000,
            "visitor_id": visitor,
            "route": "visitor",
            "strategy": "personalized",
            "policy": "ranker",
            "experiment": None,
            "variant": None,
            "snapshot_version": "20260101T000000Z-0123abcd",
            "model_version": "fv1-catboost-42",
            "anchor_item_id": None,
            "items": items,
        },
        separators=(",", ":"),
    )


def land_files(lake: Lake, files: int, per_impression_file: int, seed: int) -> tuple[int, int]:
    """(event rows, impression rows) landed."""
    rng = random.Random(seed)
    root = Path(lake.root)
    (root / LANDING_DIR).mkdir(parents=True, exist_ok=True)
    (root / IMPRESSIONS_LANDING_DIR).mkdir(parents=True, exist_ok=True)
    event_rows = impression_rows = 0
    for n in range(files):
        visitor = rng.randrange(1, 1_000_000)
        t = NOW_MS - 3_600_000 + n * 10
        rows: list[tuple[int, int, str, int, int | None, str | None]] = []
        for i in range(rng.randint(1, 5)):
            event = rng.choices(("view", "addtocart", "transaction"), (90, 8, 2))[0]
            rows.append(
                (
                    t + i,
                    visitor,
                    event,
                    rng.randrange(1, 200_000),
                    rng.randrange(1, 20_000) if event == "transaction" else None,
                    f"{rng.getrandbits(128):032x}" if rng.random() < 0.3 else None,
                )
            )
        batch_id = keyed_batch_id("bench", f"s{n}") if n % 2 else new_batch_id()
        # the bytes `api.events.land` writes (without its fsync, which times the disk)
        (root / LANDING_DIR / f"{batch_id}.csv").write_text(to_csv(rows))
        event_rows += len(rows)
        if n % per_impression_file == 0:
            lines = [impression_line(rng, n * 100 + k, visitor) for k in range(20)]
            name = f"{new_batch_id()}.jsonl"
            (root / IMPRESSIONS_LANDING_DIR / name).write_text("\n".join(lines) + "\n")
            impression_rows += len(lines)
    return event_rows, impression_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000, help="event files to land")
    parser.add_argument("--events-per-impression-file", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ingest-module", help="another copy of recsys/ingest.py to time")
    parser.add_argument("--keep", help="land and ingest into this folder, kept (else a temp one)")
    args = parser.parse_args()
    module = load_module(args.ingest_module)
    with tempfile.TemporaryDirectory(prefix="recsys-bench-landing-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        lake = Lake(str(base / "lake"))
        t0 = time.perf_counter()
        event_rows, impression_rows = land_files(
            lake, args.files, args.events_per_impression_file, args.seed
        )
        impression_files = len(lake.glob(f"{IMPRESSIONS_LANDING_DIR}/*.jsonl"))
        print(
            f"landed {args.files:,} event files ({event_rows:,} events) and "
            f"{impression_files:,} impression files ({impression_rows:,} impressions) "
            f"in {time.perf_counter() - t0:.1f}s"
        )
        t0 = time.perf_counter()
        reports = module.ingest_all_landing(
            lake, base / "work", say=print, max_timestamp_ms=NOW_MS + 1
        )
        seconds = time.perf_counter() - t0
        by_table = {r.table: r for r in reports}
        files = len(by_table["landed_events"].files) + len(by_table["landed_impressions"].files)
        rows = sum(r.raw_rows for r in reports)
        assert sum(r.rejected for r in reports) == 0, [r.reasons for r in reports]
        assert by_table["landed_events"].raw_rows == event_rows, by_table["landed_events"]
        assert by_table["landed_impressions"].raw_rows == impression_rows
        print(
            f"ingest_all_landing: {seconds:.1f}s, {files / seconds:,.0f} files/s, "
            f"{rows / seconds:,.0f} rows/s ({module.__file__})"
        )
        parquet = len(lake.glob("raw/events/*.parquet"))
        con = connect_duckdb()
        pattern = lake.url("raw/events/*.parquet")
        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            (count,) = con.execute(
                "select count(*) from read_parquet($p, union_by_name = true)", {"p": pattern}
            ).fetchone()
            timings.append(time.perf_counter() - t0)
        con.close()
        print(
            f"raw/events/: {parquet:,} Parquet files, {count:,} rows; DuckDB count(*) "
            f"best of 3 {min(timings) * 1000:.0f} ms (first {timings[0] * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()
