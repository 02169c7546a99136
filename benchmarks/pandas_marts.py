"""The `sessions` and `interactions` marts in pandas, as a notebook recommender computes them.

The reference of `bench_warehouse.py`: the two heaviest marts of the dbt build, computed the way
a typical pandas `DataProcessor` class does (vectorised pandas: sort_values, groupby().diff(),
a cumulative sum for the session numbers, groupby().agg), from the same input the build reads:
the lake's raw events Parquet (`<lake>/raw/events/*.parquet`, `recsys.ingest.RAW_EVENTS`), and
with the project's vars (dbt_project.yml: session gap, decay half-life, event weights).

What dbt does on the way (stg_retailrocket__events -> int_events_sessionized -> events ->
int_events_weighted -> sessions, interactions), done the same way here:

- the timestamps are epoch milliseconds, `epoch_ms()` -> TIMESTAMP; the cutoff (var cutoff_at,
  null = the latest event of the lake) keeps the events at or before it;
- a visitor's session starts with their first event and after every gap of strictly more than
  session_gap_minutes; seconds between two timestamps are DuckDB's `epoch(b) - epoch(a)`, a
  difference of two doubles, computed here from the same doubles (epoch ms / 1000). Ties on a
  timestamp (dbt orders them by event_id) change no session number: an event tied with the
  previous one never starts a session, whichever of them comes first;
- weight = event_weight(event type; 0 for another type) * 0.5 ** (age_days / half_life), the
  age in days at the cutoff; interactions sums it per visitor and item (dbt rounds each term to
  15 decimals and adds exactly; a float sum here, equal within ~1e-15 relative).

There is no cleaning in the models themselves: `recsys ingest` already dropped the exact
duplicates and the rejected rows (bad ids, unknown event types, timestamps) before the lake.
The item category join of the `events` mart changes neither mart (a left join on a unique key).

    python benchmarks/pandas_marts.py --data-dir DIR [--check] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
EVENT_COLUMNS = ["timestamp", "visitorid", "event", "itemid"]

SESSION_KEYS = ["visitor_id", "session_number"]
INTERACTION_KEYS = ["visitor_id", "item_id"]
# the marts' columns, in their order (dbt_project/models/marts/sessions.sql, interactions.sql)
SESSION_COLUMNS = [
    "session_id",
    "visitor_id",
    "session_number",
    "started_at",
    "ended_at",
    "duration_seconds",
    "n_events",
    "n_views",
    "n_carts",
    "n_purchases",
    "n_distinct_items",
    "is_converted",
]
INTERACTION_COLUMNS = [
    "visitor_id",
    "item_id",
    "n_events",
    "n_views",
    "n_carts",
    "n_purchases",
    "first_interaction_at",
    "last_interaction_at",
    "weight",
]
FLOAT_RTOL = 1e-9


@dataclass(frozen=True)
class MartVars:
    """The dbt vars the two marts use."""

    session_gap_minutes: float = 30
    decay_half_life_days: float = 30
    event_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "addtocart": 4.0, "transaction": 10.0}
    )


def project_vars(project_dir: Path = DBT_PROJECT_DIR) -> MartVars:
    """The vars as dbt_project.yml sets them (what `recsys build` runs with)."""
    found = yaml.safe_load((project_dir / "dbt_project.yml").read_text())["vars"]
    return MartVars(
        session_gap_minutes=float(found["session_gap_minutes"]),
        decay_half_life_days=float(found["decay_half_life_days"]),
        event_weights={k: float(v) for k, v in found["event_weights"].items()},
    )


def raw_events_files(data_dir: Path) -> list[Path]:
    """The lake's raw events files under a local data dir (RECSYS_DATA_DIR/lake/raw/events/)."""
    return sorted((data_dir / "lake" / "raw" / "events").glob("*.parquet"))


class DataProcessor:
    """Raw events -> sessions and interactions, in pandas."""

    def __init__(self, mart_vars: MartVars | None = None) -> None:
        self.vars = mart_vars or MartVars()

    def load_events(self, files: list[Path]) -> pd.DataFrame:
        """The raw events (files written by different ingests side by side, as dbt's
        union_by_name reads them), with the marts' column names."""
        if not files:
            raise FileNotFoundError("no raw events Parquet file: run `recsys ingest` first")
        frames = [pd.read_parquet(path, columns=EVENT_COLUMNS) for path in files]
        raw = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        return pd.DataFrame(
            {
                "ts_ms": raw["timestamp"].to_numpy(np.int64),
                "visitor_id": raw["visitorid"].to_numpy(np.int64),
                "event_type": raw["event"],
                "item_id": raw["itemid"].to_numpy(np.int64),
            }
        )

    def sessionize(
        self, events: pd.DataFrame, cutoff: datetime | str | None = None
    ) -> tuple[pd.DataFrame, pd.Timestamp]:
        """The events at or before the cutoff (default: the latest event), each with its
        visitor's session number; returns them sorted by visitor and time, and the cutoff."""
        if cutoff is None:
            cutoff_ms = int(events["ts_ms"].max())
        else:  # dbt's cutoff_at(): a timestamp literal of millisecond precision
            stamp = pd.Timestamp(cutoff)
            if stamp.tzinfo is not None:
                stamp = stamp.tz_convert("UTC").tz_localize(None)
            cutoff_ms = int(stamp.floor("ms").value // 1_000_000)
        events = events[events["ts_ms"] <= cutoff_ms]
        events = events.sort_values(["visitor_id", "ts_ms"], kind="stable", ignore_index=True)
        # DuckDB's epoch(): seconds as a double (ms / 1000.0 is the same double as us / 1e6)
        events["ts_s"] = events["ts_ms"] / 1000.0
        events["event_at"] = pd.to_datetime(events["ts_ms"], unit="ms").astype("datetime64[us]")
        gap = events.groupby("visitor_id")["ts_s"].diff()
        is_start = gap.isna() | (gap > self.vars.session_gap_minutes * 60)
        events["session_number"] = is_start.astype(np.int32).groupby(events["visitor_id"]).cumsum()
        return events, pd.Timestamp(cutoff_ms, unit="ms")

    @staticmethod
    def _type_counts(events: pd.DataFrame) -> pd.DataFrame:
        return events.assign(
            is_view=(events["event_type"] == "view").astype(np.int64),
            is_cart=(events["event_type"] == "addtocart").astype(np.int64),
            is_purchase=(events["event_type"] == "transaction").astype(np.int64),
        )

    def sessions(self, events: pd.DataFrame) -> pd.DataFrame:
        """One row per visitor and session (sessionized events in)."""
        grouped = self._type_counts(events).groupby(SESSION_KEYS)
        out = grouped.agg(
            started_at=("event_at", "min"),
            ended_at=("event_at", "max"),
            first_s=("ts_s", "min"),
            last_s=("ts_s", "max"),
            n_events=("ts_s", "size"),
            n_views=("is_view", "sum"),
            n_carts=("is_cart", "sum"),
            n_purchases=("is_purchase", "sum"),
            n_distinct_items=("item_id", "nunique"),
        ).reset_index()
        out["session_id"] = out["visitor_id"].astype(str) + "-" + out["session_number"].astype(str)
        out["duration_seconds"] = out.pop("last_s") - out.pop("first_s")
        out["is_converted"] = out["n_purchases"] > 0
        return _typed(out[SESSION_COLUMNS])

    def interactions(self, events: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
        """One row per visitor and item, with the time-decayed weight of its events at the
        cutoff (sessionized events in)."""
        cutoff_s = (cutoff.value // 1_000_000) / 1000.0  # DuckDB's epoch(cutoff), from ms
        age_days = (cutoff_s - events["ts_s"]) / 86400.0
        weights = events["event_type"].map(self.vars.event_weights).astype(float).fillna(0.0)
        decay = np.power(0.5, age_days / self.vars.decay_half_life_days)
        grouped = self._type_counts(events).assign(weight=weights * decay)
        out = (
            grouped.groupby(INTERACTION_KEYS)
            .agg(
                n_events=("weight", "size"),
                n_views=("is_view", "sum"),
                n_carts=("is_cart", "sum"),
                n_purchases=("is_purchase", "sum"),
                first_interaction_at=("event_at", "min"),
                last_interaction_at=("event_at", "max"),
                weight=("weight", "sum"),
            )
            .reset_index()
        )
        return _typed(out[INTERACTION_COLUMNS])


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The marts' types: bigint counts and ids, integer session numbers, us timestamps."""
    types: dict[str, Any] = {}
    for name in frame.columns:
        if name == "session_number":
            types[name] = np.int32
        elif name.startswith("n_") or name in ("visitor_id", "item_id"):
            types[name] = np.int64
        elif name.endswith("_at"):
            types[name] = "datetime64[us]"
    return frame.astype(types)


@dataclass
class Marts:
    sessions: pd.DataFrame
    interactions: pd.DataFrame
    cutoff: pd.Timestamp
    n_events: int
    seconds: dict[str, float]
    vars: MartVars


def compute(
    data_dir: Path, cutoff: datetime | str | None = None, mart_vars: MartVars | None = None
) -> Marts:
    """Both marts from the lake under a local data dir, each step timed (wall seconds)."""
    mart_vars = mart_vars or project_vars()
    processor = DataProcessor(mart_vars)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    raw = processor.load_events(raw_events_files(data_dir))
    seconds["read"] = time.perf_counter() - t0
    t = time.perf_counter()
    events, cutoff_at = processor.sessionize(raw, cutoff)
    del raw
    seconds["sessionize"] = time.perf_counter() - t
    t = time.perf_counter()
    sessions = processor.sessions(events)
    seconds["sessions"] = time.perf_counter() - t
    t = time.perf_counter()
    interactions = processor.interactions(events, cutoff_at)
    seconds["interactions"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return Marts(sessions, interactions, cutoff_at, len(events), seconds, mart_vars)


# -- the check against the warehouse ----------------------------------------------------------


def read_warehouse(warehouse: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """sessions, interactions and the feature_builds row (cutoff, vars) of a built warehouse,
    opened read-only."""
    from recsys.lake import connect_duckdb

    with connect_duckdb(warehouse, read_only=True) as con:
        sessions = con.execute("select * from sessions").df()
        interactions = con.execute("select * from interactions").df()
        found = con.execute("select * from feature_builds").df()
    if len(found) != 1:
        raise RuntimeError(f"{warehouse}: feature_builds has {len(found)} rows, not one build")
    build = {str(k): v for k, v in found.iloc[0].items()}
    return sessions, interactions, build


def vars_of_build(build: dict[str, Any]) -> MartVars:
    """The vars a build recorded in feature_builds."""
    return MartVars(
        session_gap_minutes=float(build["session_gap_minutes"]),
        decay_half_life_days=float(build["decay_half_life_days"]),
        event_weights={k: float(v) for k, v in json.loads(build["event_weights"]).items()},
    )


def compare(
    name: str,
    ours: pd.DataFrame,
    theirs: pd.DataFrame,
    keys: list[str],
    rtol: float = FLOAT_RTOL,
    show: int = 5,
) -> str | None:
    """None when both frames hold the same rows (any order): the same keys, and the same values,
    exactly but for floats (relative tolerance `rtol`); else what differs, first rows shown
    (sorted by key; `ours` = pandas, `theirs` = dbt)."""
    if list(ours.columns) != list(theirs.columns):
        return f"{name}: columns differ: pandas {list(ours.columns)}, dbt {list(theirs.columns)}"
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"{len(ours):,} rows in pandas, {len(theirs):,} in dbt")
    for label, frame in (("pandas", ours), ("dbt", theirs)):
        dups = int(frame.duplicated(keys).sum())
        if dups:
            problems.append(f"{dups:,} duplicate keys in {label}")
    merged = ours.merge(
        theirs, on=keys, how="outer", suffixes=("_pandas", "_dbt"), indicator=True, sort=True
    )
    only = merged[merged["_merge"] != "both"]
    if len(only):
        counts = only["_merge"].value_counts()
        problems.append(
            f"keys only in pandas: {int(counts.get('left_only', 0)):,}, "
            f"only in dbt: {int(counts.get('right_only', 0)):,}; first:\n"
            + only.head(show).to_string(max_cols=30)
        )
    both = merged[merged["_merge"] == "both"]
    bad = np.zeros(len(both), dtype=bool)
    differing = []
    for column in ours.columns:
        if column in keys:
            continue
        a, b = both[f"{column}_pandas"], both[f"{column}_dbt"]
        if pd.api.types.is_float_dtype(a) or pd.api.types.is_float_dtype(b):
            x, y = a.to_numpy(np.float64), b.to_numpy(np.float64)
            same = np.isclose(x, y, rtol=rtol, atol=0.0) | (np.isnan(x) & np.isnan(y))
        elif pd.api.types.is_datetime64_any_dtype(a):
            same = a.astype("datetime64[us]").to_numpy() == b.astype("datetime64[us]").to_numpy()
        else:
            same = a.astype(object).to_numpy() == b.astype(object).to_numpy()
        same = np.asarray(same, dtype=bool)
        if not same.all():
            differing.append(f"{column} ({int((~same).sum()):,} rows)")
            bad |= ~same
    if differing:
        problems.append(
            "values differ in "
            + ", ".join(differing)
            + "; first:\n"
            + both[bad].drop(columns="_merge").head(show).to_string(max_cols=30)
        )
    return f"{name}: " + "; ".join(problems) if problems else None


def check(marts: Marts, warehouse: Path) -> list[str]:
    """What differs between the pandas marts and the warehouse's (empty: the same rows)."""
    sessions, interactions, build = read_warehouse(warehouse)
    problems = []
    built_cutoff = pd.Timestamp(build["cutoff_at"])
    if built_cutoff != marts.cutoff:
        problems.append(f"cutoff: pandas {marts.cutoff}, the warehouse's build {built_cutoff}")
    if vars_of_build(build) != marts.vars:
        problems.append(f"vars: pandas {marts.vars}, the warehouse's build {vars_of_build(build)}")
    for name, ours, theirs, keys in (
        ("sessions", marts.sessions, sessions, SESSION_KEYS),
        ("interactions", marts.interactions, interactions, INTERACTION_KEYS),
    ):
        found = compare(name, ours, theirs, keys)
        if found:
            problems.append(found)
    return problems


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("RECSYS_DATA_DIR"),
        help="the data dir (lake/raw/events/, warehouse.duckdb); default $RECSYS_DATA_DIR",
    )
    parser.add_argument("--cutoff-at", help="as dbt's var cutoff_at (default: the latest event)")
    parser.add_argument(
        "--check", action="store_true", help="compare with the warehouse's marts (read-only)"
    )
    parser.add_argument("--json", help="write the figures and the check's result here")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("--data-dir or RECSYS_DATA_DIR is required")
    data_dir = Path(args.data_dir)

    marts = compute(data_dir, args.cutoff_at)
    peak = peak_rss_gb()
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in marts.seconds.items() if k != "total")
    print(
        f"pandas marts: {marts.n_events:,} events as of {marts.cutoff} -> "
        f"{len(marts.sessions):,} sessions, {len(marts.interactions):,} interactions in "
        f"{marts.seconds['total']:.2f} s ({steps}), peak RSS {peak:.2f} GB"
    )
    result: dict[str, Any] = {
        "seconds": marts.seconds,
        "peak_rss_gb": peak,
        "n_events": marts.n_events,
        "cutoff_at": str(marts.cutoff),
        "rows": {"sessions": len(marts.sessions), "interactions": len(marts.interactions)},
    }
    code = 0
    if args.check:
        problems = check(marts, data_dir / "warehouse.duckdb")
        result["problems"] = problems
        if problems:
            print("pandas vs dbt: MISMATCH")
            for problem in problems:
                print(problem)
            code = 1
        else:
            print(
                f"pandas vs dbt: the same rows (sessions {len(marts.sessions):,}, interactions "
                f"{len(marts.interactions):,}; floats within {FLOAT_RTOL:g} relative)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
