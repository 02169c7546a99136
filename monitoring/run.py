"""`recsys monitor`: the monitoring models, the retraining decision, the report and the export.

0. the events and impressions the API landed are ingested (`--no-ingest` leaves them);
1. the served snapshot (`snapshots/LATEST`'s manifest) names the reference, the feature version
   its lists were computed from (`reference_version`), and the offline figures;
2. each published snapshot's lists go to the lake's `monitoring/published/<version>.parquet`
   once, for the live performance model;
3. `dbt build --select tag:monitoring` as of the warehouse's current cutoff: drift of the
   current feature marts against the reference's, of the event mix and categories of the
   latest week ingested against the reference's last week, live performance, hourly volume
   (their tests warn, never fail the build);
4. `dbt source freshness` on the raw events and impressions;
5. the policy (monitoring/policy.py) decides, with every reason; the decision is recorded in the
   lake's `monitoring/decisions/`;
6. `reports/monitoring.json` (DESIGN.md's shape) and `reports/monitoring.html` with plots are
   written, and exported with the monitoring tables to the lake's `monitoring/exports/<id>/`
   (then `monitoring/LATEST`), where the monitoring service reads them.

The warehouse has one writer: the command runs where `recsys build` runs (the Airflow DAG holds
the warehouse lease around it).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from monitoring import export
from monitoring.policy import Decision, Observation, Policy, decide
from recsys.errors import NotReady
from recsys.lake import TEMP_PREFIX, Lake, connect_duckdb
from recsys.settings import Settings
from recsys.snapshots import VERSION_PATTERN, check_version, latest_manifest, open_snapshot

# the tables exported beside the report (and read into it)
TABLES = (
    "drift_features",
    "drift_mixes",
    "drift_mix_shares",
    "drift_status",
    "drift_feature_profiles",
    "live_performance",
    "event_volume_hourly",
    "business_metrics_daily",
)
PUBLISHED = "monitoring/published"
PUBLISHED_DEPTH = 20  # recall@20 needs the top 20 of each list
# dbt source -> its folder under the lake's raw/
FRESHNESS_SOURCES = {"retailrocket.events": "events", "api.impressions": "impressions"}
# a feature version names a folder of the lake: only the pipeline's own characters
FEATURE_VERSION = r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
# the decisions read back for the cool-down and the weekly cadence: an hourly run's eight days
DECISIONS_READ = 200


@dataclass(frozen=True)
class MonitorResult:
    report: dict[str, Any]
    decision: Decision
    export_id: str
    report_path: Path


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _parse_time(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def reference_version(lake: Lake, manifest: dict[str, Any] | None) -> str | None:
    """The reference of the drift models: the feature version of the served snapshot (the
    features its lists and request-time ranking were computed from when it was published),
    when its marts are in the lake; else None (drift is then not measured).

    Not the ranker's training cutoff: that is t1, the test and label windows (28 days by
    default) before the snapshot's own, so a snapshot published a minute ago would already
    show four weeks of drift, and retraining (which moves t1 along with everything else)
    would never clear it: the policy would retrain at every cool-down's end.
    """
    import re

    candidate = (manifest or {}).get("feature_version")
    if not isinstance(candidate, str) or not re.fullmatch(FEATURE_VERSION, candidate):
        return None
    if not lake.exists(f"features/{candidate}/feature_builds.parquet"):
        return None
    return candidate


def reference_cutoff(lake: Lake, version: str) -> datetime | None:
    """The cutoff of a feature version exported to the lake (its feature_builds mart)."""
    import pyarrow.parquet as parquet

    with lake.open(f"features/{version}/feature_builds.parquet") as fh:
        table = parquet.read_table(fh, columns=["cutoff_at"])
    values = table.column("cutoff_at").to_pylist()
    return _parse_time(values[0].isoformat()) if values and values[0] else None


def offline_figures(manifest: dict[str, Any] | None) -> dict[str, float | None]:
    models = ((manifest or {}).get("metrics") or {}).get("models") or {}
    ranker = models.get("als_catboost") or {}
    return {
        "ndcg@10": _finite(ranker.get("ndcg@10")),
        "recall@20": _finite(ranker.get("recall@20")),
    }


def publish_lists(lake: Lake, say: Callable[[str], None]) -> list[str]:
    """Write `monitoring/published/<version>.parquet` for each published snapshot that has
    none yet: its lists' top PUBLISHED_DEPTH, its cutoff and its offline figures."""
    versions = sorted(
        {p.split("/")[1] for p in lake.glob("snapshots/*/manifest.json")}, reverse=True
    )
    # the lists of snapshots the publisher has pruned go too: live performance covers the
    # snapshots still in the lake (models_ml.publish.KEEP), so its rows stay bounded
    for path in lake.glob(f"{PUBLISHED}/*.parquet"):
        name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
        if VERSION_PATTERN.fullmatch(name) and name not in versions:
            lake.remove(f"{PUBLISHED}/{name}.parquet")
    written = []
    for version in versions:
        if not VERSION_PATTERN.fullmatch(version):
            continue  # not the publisher's name: never used as a path
        try:
            if _publish_list(lake, version):
                written.append(version)
                say(f"  published lists of snapshot {version} -> {lake.url(_published(version))}")
        except Exception as exc:  # one unreadable snapshot must not stop monitoring for good
            say(f"  skipped the lists of snapshot {version}: {type(exc).__name__}: {exc}")
    return written


def _published(version: str) -> str:
    return f"{PUBLISHED}/{version}.parquet"


def _publish_list(lake: Lake, version: str) -> bool:
    """One snapshot's lists to the lake, unless there already; whether it wrote them."""
    target = _published(version)
    if lake.exists(target) or not lake.exists(f"snapshots/{version}/snapshot.duckdb"):
        return False
    manifest = json.loads(lake.read_text(f"snapshots/{version}/manifest.json"))
    if not isinstance(manifest, dict):
        raise ValueError("its manifest is not a JSON object")
    cutoff = _parse_time(manifest.get("cutoff_at"))
    cutoff = cutoff.astimezone(UTC) if cutoff else None
    figures = offline_figures(manifest)
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        local = Path(tmp) / "snapshot.duckdb"
        lake.get(f"snapshots/{version}/snapshot.duckdb", local)
        out = Path(tmp) / "published.parquet"
        # the snapshot file is opened so that it can touch nothing else: its rows come
        # out as Arrow, written here
        with open_snapshot(local, threads=1, memory_limit="1GB") as con:
            table = con.sql(
                f"""
                select
                    cast(? as varchar) as snapshot_version,
                    cast(? as timestamp) as cutoff_at,
                    cast(visitor_id as bigint) as visitor_id,
                    cast(item_id as bigint) as item_id,
                    cast("rank" as integer) as "rank",
                    cast(? as double) as offline_ndcg_at_10,
                    cast(? as double) as offline_recall_at_20
                from main.recommendations
                where "rank" <= {PUBLISHED_DEPTH}
                """,
                params=[
                    version,
                    cutoff.replace(tzinfo=None) if cutoff else None,
                    figures["ndcg@10"],
                    figures["recall@20"],
                ],
            ).to_arrow_table()
        pq.write_table(table, out)
        lake.put(out, target)
    return True


def _table_exists(con: Any, table: str) -> bool:
    found = con.execute(
        "select count(*) from duckdb_tables() where schema_name = 'main' and table_name = ?",
        [table],
    ).fetchone()
    return bool(found and found[0])


def _rows(con: Any, table: str, sql: str = "select * from {table}") -> list[dict[str, Any]]:
    """The rows of `sql` over `table` (one of the monitoring models, or a mart), as dicts;
    none when the warehouse has no such table yet (a build before the monitoring models)."""
    if not _table_exists(con, table):
        return []
    cursor = con.execute(sql.format(table=f'main."{table}"'))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def assemble(
    con: Any,
    manifest: dict[str, Any] | None,
    reference: str | None,
    current: str | None,
    freshness: dict[str, Any],
    volume: list[dict[str, Any]],
) -> dict[str, Any]:
    """monitoring.json (DESIGN.md's shape, without `retrain`) from the monitoring tables
    (`volume`: event_volume_hourly's rows, read once for the report and its plot)."""
    features = {
        str(row["feature"]): {
            "kind": row["kind"],
            "psi": _finite(row.get("psi")),
            "ks": _finite(row.get("ks")),
            "status": row["status"],
            "n_reference": row.get("n_reference"),
            "n_current": row.get("n_current"),
        }
        for row in _rows(con, "drift_features", "select * from {table} order by feature")
    }
    mixes = {
        str(row["dimension"]): {"psi": _finite(row["psi"]), "status": row["status"]}
        for row in _rows(con, "drift_mixes")
    }
    status = next((row["status"] for row in _rows(con, "drift_status")), None)
    # complete days only: the last one is still filling up (and day 0 of a snapshot published
    # today), and a partial day's few visitors say little
    performance = _rows(
        con,
        "live_performance",
        "select * from {table} where is_complete_day order by snapshot_version, day",
    )
    live = [
        {
            "snapshot_version": row["snapshot_version"],
            "day": int(row["day"]),
            "ndcg@10": _finite(row["ndcg_at_10"]),
            "recall@20": _finite(row["recall_at_20"]),
            "n_visitors": int(row["n_visitors"]),
        }
        for row in performance
    ]
    offline = {
        row["snapshot_version"]: {
            "ndcg@10": _finite(row["offline_ndcg_at_10"]),
            "recall@20": _finite(row["offline_recall_at_20"]),
        }
        for row in _rows(
            con,
            "live_performance",
            "select distinct snapshot_version, offline_ndcg_at_10, offline_recall_at_20 "
            "from {table}",
        )
    }
    if manifest and manifest.get("version"):
        offline.setdefault(manifest["version"], offline_figures(manifest))
    last_hour = max(volume, key=lambda row: row["hour_start_at"], default=None)
    # the last complete day: the build's cutoff falls inside the last day of the mart
    last_day = _rows(
        con,
        "business_metrics_daily",
        "select metric_date, recommendation_ctr, conversion_rate, revenue from {table} "
        "where metric_date < (select cast(max(cutoff_at) as date) from feature_builds) "
        "order by metric_date desc limit 1",
    )
    return {
        "reference": {
            "feature_version": reference,
            "snapshot_version": (manifest or {}).get("version"),
        },
        "current": {"feature_version": current},
        "drift": {
            "status": status,
            "features": features,
            "event_mix": mixes.get("event_mix"),
            "categories": mixes.get("categories"),
        },
        "live_performance": live,
        "offline": offline,
        "freshness": freshness,
        "volume": {
            "hour": str(last_hour["hour_start_at"]),
            "ratio": _finite(last_hour["ratio"]),
            "status": last_hour["status"],
        }
        if last_hour
        else None,
        "business": {
            "day": str(last_day[0]["metric_date"]),
            "ctr": _finite(last_day[0]["recommendation_ctr"]),
            "conversion_rate": _finite(last_day[0]["conversion_rate"]),
            "revenue": _finite(last_day[0]["revenue"]),
        }
        if last_day
        else None,
    }


def observe(
    report: dict[str, Any],
    manifest: dict[str, Any] | None,
    history: list[dict[str, Any]],
    policy: Policy,
    now: datetime,
) -> Observation:
    """The policy's view of a report: the served snapshot's latest day with enough visitors."""
    served = (manifest or {}).get("version")
    days = [
        row
        for row in report["live_performance"]
        if row["snapshot_version"] == served
        and row["n_visitors"] >= policy.min_live_visitors
        and row["ndcg@10"] is not None
    ]
    latest = max(days, key=lambda row: row["day"], default=None)
    if latest is None:  # no day with enough visitors: the latest day, for the record
        latest = max(
            (r for r in report["live_performance"] if r["snapshot_version"] == served),
            key=lambda row: row["day"],
            default=None,
        )
    drift = report["drift"]
    failing = sorted(name for name, f in drift["features"].items() if f["status"] == "fail")
    failing += [
        name
        for name in ("event_mix", "categories")
        if (drift.get(name) or {}).get("status") == "fail"
    ]
    last_retrain = max(
        (
            t
            for t in (_parse_time(d.get("decided_at")) for d in history if d.get("decision"))
            if t is not None
        ),
        default=None,
    )
    return Observation(
        now=now,
        drift_status=drift["status"],
        drift_failing=tuple(failing),
        snapshot_version=served,
        snapshot_published_at=_parse_time((manifest or {}).get("created_at")),
        offline_ndcg=offline_figures(manifest)["ndcg@10"],
        live_ndcg=latest["ndcg@10"] if latest else None,
        live_visitors=latest["n_visitors"] if latest else 0,
        live_day=latest["day"] if latest else None,
        last_retrain_at=last_retrain,
    )


def _freshness(settings: Settings, say: Callable[[str], None]) -> dict[str, Any]:
    from recsys.warehouse import source_freshness

    lake = Lake.from_settings(settings)
    # a source with no file yet (impressions before the API's first batch) is not measured:
    # dbt's freshness would report a runtime error for it
    selected = [
        f"source:{source}"
        for source, folder in FRESHNESS_SOURCES.items()
        if lake.glob(f"raw/{folder}/*.parquet")
    ]
    found = source_freshness(settings, selected) if selected else []
    results = {f.source: f for f in found}
    for f in results.values():
        age = f"{f.age_seconds / 3600:,.1f} h" if f.age_seconds is not None else "?"
        say(f"  freshness of {f.source}: {f.status} (newest {f.max_loaded_at}, age {age})")
    events = results.get("retailrocket.events")
    impressions = results.get("api.impressions")
    return {
        "events_lag_seconds": _finite(events.age_seconds) if events else None,
        "events_status": events.status if events else None,
        "impressions_lag_seconds": _finite(impressions.age_seconds) if impressions else None,
        "impressions_status": impressions.status if impressions else None,
    }


def _current_build(settings: Settings) -> tuple[str, str]:
    from recsys.warehouse import IncompleteBuild, check_one_build

    if not settings.warehouse_path.exists():
        raise NotReady(
            f"no warehouse at {settings.warehouse_path}: run `recsys build` (or `recsys run`) first"
        )
    with connect_duckdb(settings.warehouse_path, read_only=True) as con:
        try:
            version = check_one_build(con)
        except IncompleteBuild as exc:
            raise NotReady(str(exc)) from None
        row = con.execute("select cutoff_at from feature_builds").fetchone()
    assert row is not None
    return version, str(row[0])


def _export_tables(con: Any, out: Path) -> dict[str, Path]:
    """The monitoring tables (those the warehouse has) as Parquet files in `out`."""
    files: dict[str, Path] = {}
    for table in TABLES:
        if _table_exists(con, table):
            path = out / f"{table}.parquet"
            con.execute(f"copy main.\"{table}\" to '{path}' (format parquet)")
            files[path.name] = path
    return files


@dataclass(frozen=True)
class Prepared:
    """What a monitoring run compares: the served snapshot and the warehouse's build."""

    current: str  # the warehouse's feature version
    cutoff_at: str
    reference: str | None
    manifest: dict[str, Any] | None

    def dbt_vars(self) -> dict[str, Any]:
        """The vars of the monitoring models' build (`dbt build --select tag:monitoring`)."""
        return {"cutoff_at": self.cutoff_at, "monitoring_reference_version": self.reference}


def prepare(settings: Settings, say: Callable[[str], None] = print) -> Prepared:
    """The reference and the current build; the published lists written to the lake."""
    lake = Lake.from_settings(settings)
    current, cutoff = _current_build(settings)
    manifest = latest_manifest(lake)
    if manifest and manifest.get("version"):
        check_version(str(manifest["version"]))
    reference = reference_version(lake, manifest)
    if reference is not None:
        served_cutoff = reference_cutoff(lake, reference)
        built = _parse_time(cutoff)
        if served_cutoff and built and built < served_cutoff:
            # a training run stopped part-way (or refused by the gate) leaves the warehouse at
            # its t1 / t2 builds: weeks before the snapshot, which is not drift
            say(
                f"the warehouse's build ({current}, cutoff {cutoff}) is older than the served "
                f"snapshot's features ({reference}): drift not measured; run `recsys build` "
                "(or the features DAG) to build as of the latest event"
            )
            reference = None
    say(
        f"monitoring feature version {current} against "
        + (f"reference {reference}" if reference else "no reference (no served snapshot)")
    )
    publish_lists(lake, say)
    return Prepared(current, cutoff, reference, manifest)


def build_models(settings: Settings, prepared: Prepared) -> None:
    """The monitoring models and their tests (which warn, never fail the build)."""
    from recsys.warehouse import MONITORING_SELECT, dbt_command

    dbt_command(
        settings,
        ["build", "--select", *MONITORING_SELECT],
        extra_vars=prepared.dbt_vars(),
    )


def conclude(
    settings: Settings,
    prepared: Prepared,
    *,
    now: datetime | None = None,
    policy: Policy | None = None,
    run_id: str | None = None,
    say: Callable[[str], None] = print,
) -> MonitorResult:
    """Freshness, the report, the decision, the export to the lake, then the decision's
    record (with `run_id`, the scheduler's run, when there is one)."""
    from monitoring.report import write_report

    now = (now or datetime.now(UTC)).replace(microsecond=0)
    policy = policy or Policy.from_settings(settings)
    lake = Lake.from_settings(settings)
    manifest = prepared.manifest
    freshness = _freshness(settings, say)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        out = Path(tmp)
        with connect_duckdb(settings.warehouse_path, read_only=True) as con:
            volume = _rows(con, "event_volume_hourly")
            report = assemble(
                con, manifest, prepared.reference, prepared.current, freshness, volume
            )
            files: dict[str, Any] = _export_tables(con, out)
        published_at = _parse_time((manifest or {}).get("created_at"))
        report["freshness"]["snapshot_age_seconds"] = (
            (now - published_at).total_seconds() if published_at else None
        )
        # a retried run (an Airflow task cleared) is not held back by its own decision
        history = [
            d
            for d in export.read_decisions(lake, limit=DECISIONS_READ)
            if not run_id or d.get("run_id") != run_id
        ]
        decision = decide(observe(report, manifest, history, policy, now), policy)
        record = {**decision.record(), "run_id": run_id}
        report["retrain"] = record
        report["generated_at"] = now.isoformat()
        files.update(write_report(report, out, volume))
        export_id = export.write_export(lake, report, files)
        report["export_id"] = export_id
        for name, path in files.items():  # the report beside metrics.json's
            if not name.endswith(".parquet"):
                local = "monitoring.html" if name == "report.html" else name
                (settings.reports_dir / local).write_bytes(Path(path).read_bytes())
    # recorded once the export is in place: a run that failed before decided nothing
    export.record_decision(lake, record)
    report_path = settings.reports_dir / "monitoring.json"
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    say(
        f"drift {report['drift']['status'] or 'not measured'}; "
        f"report {settings.reports_dir / 'monitoring.html'}; "
        f"exported to {lake.url(export.EXPORTS + '/' + export_id)}"
    )
    say(decision.summary())
    return MonitorResult(report, decision, export_id, report_path)


def ingest_landed(settings: Settings, say: Callable[[str], None] = print) -> int:
    """The events and impressions the API landed -> the lake's raw/ (as the DAGs' ingest
    without a raw_dir); the rows accepted."""
    from recsys.ingest import ingest_all_landing

    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        reports = ingest_all_landing(
            Lake.from_settings(settings), Path(tmp), say, settings.max_event_timestamp_ms()
        )
    if not reports:
        say("no landed events or impressions waiting")
    return sum(r.accepted for r in reports)


def monitor(
    settings: Settings,
    *,
    ingest: bool = True,
    now: datetime | None = None,
    policy: Policy | None = None,
    say: Callable[[str], None] = print,
) -> MonitorResult:
    """One monitoring run (after ingesting what the API landed, unless `ingest` is false);
    see the module's doc."""
    started = time.perf_counter()
    if ingest:
        ingest_landed(settings, say)
    prepared = prepare(settings, say)
    build_models(settings, prepared)
    result = conclude(settings, prepared, now=now, policy=policy, say=say)
    say(f"monitoring done in {time.perf_counter() - started:.1f} s")
    return result
