"""The lake's `monitoring/` prefix: what `recsys monitor` writes and the monitoring service reads.

Layout (under the lake root, `recsys.lake.Lake`; DESIGN.md, "Lake layout"):

- `monitoring/exports/<export_id>/monitoring.json`: the report (DESIGN.md's
  `reports/monitoring.json`, plus `export_id`, `generated_at`, `volume`, `offline`, and
  `retrain.held` / `retrain.policy` ...), beside `report.html`, its `*.png` images and the
  monitoring tables as `<table>.parquet`;
- `monitoring/LATEST`: the export id, written last (a reader switches only then);
- `monitoring/decisions/<decided_at %Y%m%dT%H%M%SZ>.json`: every retraining decision;
- `monitoring/alerts/<YYYY-MM-DD>/<received_at %Y%m%dT%H%M%S%fZ>-<8 hex>.json`: every
  Alertmanager notification the monitoring service received.

An export id is `%Y%m%dT%H%M%SZ-<8 lowercase hex>`. Nothing read from the lake is trusted: an
id is checked against that format before it names anything (`check_export_id`), a file name
against `FILE_NAME` (`check_file_name`), and `monitoring.json` is validated by
`MonitoringReport` (types, statuses in ok / warn / fail, finite numbers or null, bounded sizes;
unknown keys are ignored, so a newer writer does not break an older reader) after a size check.
The writer validates with the same model before it writes, so that it cannot publish an export
the service would refuse.

Core-level: imports `recsys.*`, pydantic and the standard library only (no FastAPI).
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
)

from recsys.lake import TEMP_PREFIX, Lake
from recsys.snapshots import shown

log = logging.getLogger("monitoring.export")

# --- the layout ---------------------------------------------------------------------------------
PREFIX = "monitoring"
EXPORTS = f"{PREFIX}/exports"
LATEST = f"{PREFIX}/LATEST"
DECISIONS = f"{PREFIX}/decisions"
ALERTS = f"{PREFIX}/alerts"
REPORT_JSON = "monitoring.json"
REPORT_HTML = "report.html"

EXPORT_ID_FORMAT = "%Y%m%dT%H%M%SZ"
EXPORT_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")
DECISION_FORMAT = "%Y%m%dT%H%M%SZ"
DECISION_NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z\.json")
ALERT_FORMAT = "%Y%m%dT%H%M%S%fZ"
# the files of an export: lowercase names, four kinds (the report, its images, the tables)
FILE_NAME = re.compile(r"[a-z0-9_]{1,64}\.(json|html|png|parquet)")
CONTENT_TYPES = {
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "png": "image/png",
    "parquet": "application/vnd.apache.parquet",
}

KEEP_EXPORTS = 48  # exports kept by `prune_exports` (hourly runs: two days)
MAX_REPORT_BYTES = 8 * 1_048_576  # monitoring.json
MAX_FILE_BYTES = 64 * 1_048_576  # report.html, an image, a table
MAX_DECISION_BYTES = 256 * 1024
MAX_LATEST_BYTES = 256
MAX_FEATURES = 2_000
MAX_LIVE_ROWS = 20_000
MAX_SNAPSHOTS = 1_000  # entries of `offline`
MAX_REASONS = 32
MAX_POLICY_ENTRIES = 64


class ExportError(ValueError):
    """An export that cannot be used, with a short `reason` for the failure counter:
    `latest` (LATEST names no export id), `missing` (no monitoring.json), `too_large`,
    `invalid` (not JSON, or not the shape), `lake` (the lake could not be read)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


LOAD_FAILURE_REASONS = ("latest", "missing", "too_large", "invalid", "lake")


def check_export_id(text: str) -> str:
    """`text` if it is an export id the writer could have made, else ExportError(`latest`)."""
    if not EXPORT_ID.fullmatch(text):
        raise ExportError(
            "latest",
            f"{shown(text)} is not a monitoring export id (expected YYYYMMDDTHHMMSSZ-<8 hex>)",
        )
    return text


def check_file_name(name: str) -> str:
    """`name` if it may name a file of an export, else ValueError."""
    if not FILE_NAME.fullmatch(name):
        raise ValueError(
            f"{shown(name)} is not an export file name "
            "(lowercase letters, digits, _; .json, .html, .png or .parquet)"
        )
    return name


def new_export_id(now: datetime | None = None) -> str:
    """`<now as %Y%m%dT%H%M%SZ>-<8 random hex>`: sorts by time, unique per writer."""
    return f"{_utc(now or datetime.now(UTC)).strftime(EXPORT_ID_FORMAT)}-{secrets.token_hex(4)}"


def export_dir(export_id: str) -> str:
    return f"{EXPORTS}/{check_export_id(export_id)}"


# --- the report's model -------------------------------------------------------------------------
Status = Literal["ok", "warn", "fail"]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# bounds with a little room for floating-point rounding (an NDCG of 1 + 2e-16, a PSI of
# -1e-17): a whole export is not refused for the last bit of one figure
ROUNDING = 1e-9
NonNegative = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-ROUNDING)]
Fraction = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-ROUNDING, le=1 + ROUNDING)]
Count = Annotated[StrictInt, Field(ge=0, le=10**15)]
Text = Annotated[str, StringConstraints(max_length=256)]
Detail = Annotated[str, StringConstraints(max_length=2_000)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# a day: a date (YYYY-MM-DD) or a day number (the n-th day a snapshot served)
Day = date | Annotated[StrictInt, Field(ge=0, le=1_000_000)]


class _Section(BaseModel):
    """Every part of the report: unknown keys ignored (not kept, never exported), immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Reference(_Section):
    feature_version: Name | None = None
    snapshot_version: Name | None = None


class Current(_Section):
    feature_version: Name | None = None


class DriftFeature(_Section):
    kind: Literal["numeric", "categorical"] | None = None
    psi: NonNegative | None = None
    ks: Fraction | None = None
    status: Status | None = None


class DriftMix(_Section):
    psi: NonNegative | None = None
    status: Status | None = None


class Drift(_Section):
    status: Status | None = None
    features: dict[Name, DriftFeature] = Field(default_factory=dict, max_length=MAX_FEATURES)
    event_mix: DriftMix | None = None
    categories: DriftMix | None = None


class LivePerformance(_Section):
    snapshot_version: Name | None = None
    day: Day | None = None
    ndcg_at_10: Fraction | None = Field(default=None, alias="ndcg@10")
    recall_at_20: Fraction | None = Field(default=None, alias="recall@20")
    n_visitors: Count | None = None


class OfflineMetrics(_Section):
    ndcg_at_10: Fraction | None = Field(default=None, alias="ndcg@10")
    recall_at_20: Fraction | None = Field(default=None, alias="recall@20")


class Freshness(_Section):
    events_lag_seconds: Finite | None = None
    snapshot_age_seconds: Finite | None = None


class Business(_Section):
    day: Day | None = None
    ctr: NonNegative | None = None
    conversion_rate: NonNegative | None = None
    revenue: Finite | None = None


class Volume(_Section):
    hour: datetime | Text | None = None
    ratio: NonNegative | None = None
    status: Status | None = None


PolicyValue = Finite | StrictBool | Text | None


class Retrain(_Section):
    """A retraining decision (monitoring.policy.Decision.record())."""

    decision: StrictBool | None = None
    reasons: list[Text] = Field(default_factory=list, max_length=MAX_REASONS)
    details: list[Detail] | None = Field(default=None, max_length=MAX_REASONS)
    held: list[Text] | None = Field(default=None, max_length=MAX_REASONS)
    held_details: list[Detail] | None = Field(default=None, max_length=MAX_REASONS)
    cooldown_until: datetime | None = None
    decided_at: datetime | None = None
    policy: dict[Name, PolicyValue] | None = Field(default=None, max_length=MAX_POLICY_ENTRIES)


class MonitoringReport(_Section):
    """monitoring.json as the service reads it (and serves it at /v1/monitoring)."""

    export_id: Annotated[str, StringConstraints(pattern=EXPORT_ID.pattern)] | None = None
    generated_at: datetime | None = None
    reference: Reference | None = None
    current: Current | None = None
    drift: Drift | None = None
    live_performance: list[LivePerformance] = Field(default_factory=list, max_length=MAX_LIVE_ROWS)
    offline: dict[Name, OfflineMetrics] = Field(default_factory=dict, max_length=MAX_SNAPSHOTS)
    freshness: Freshness | None = None
    business: Business | None = None
    volume: Volume | None = None
    retrain: Retrain | None = None


@dataclass(frozen=True)
class LoadedExport:
    """An export read and validated: its id, its report, and when it was made (UTC)."""

    export_id: str
    report: MonitoringReport
    generated_at: datetime  # the report's `generated_at`, else the time in its id


# --- writing ------------------------------------------------------------------------------------
def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first NaN or infinity in `value`, if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "(root)"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, child in items:
        found = _non_finite(child, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def to_json(document: dict[str, Any]) -> str:
    """`document` as JSON text: dates as ISO text; NaN and infinities refused (ValueError
    naming where: write None for "nothing to measure")."""
    try:
        return json.dumps(document, default=_json_default, allow_nan=False, indent=2) + "\n"
    except ValueError:
        where = _non_finite(document, "")
        if where is None:
            raise
        raise ValueError(
            f"{where} is not a finite number (write null when there is none)"
        ) from None


def _validation_message(exc: ValidationError, what: str, limit: int = 5) -> str:
    errors = exc.errors()
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ())) or '(root)'}: {e.get('msg', '')}"
        for e in errors[:limit]
    ]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"{what} is not valid: " + "; ".join(parts) + more


def _write_bytes(lake: Lake, rel: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        local = Path(tmp) / "file"
        local.write_bytes(data)
        lake.put(local, rel)


def write_export(
    lake: Lake,
    report: dict[str, Any],
    files: Mapping[str, bytes | Path] | None = None,
    *,
    now: datetime | None = None,
    keep: int | None = KEEP_EXPORTS,
) -> str:
    """Write a new export and point `monitoring/LATEST` at it; returns its id.

    `report` becomes `monitoring.json`, with `export_id` set and `generated_at` (ISO UTC) added
    unless it has one; it is validated first (ValueError naming the fields when the service
    would refuse it; NaN is refused too: write None for "nothing to measure"). `files` (name ->
    bytes or a local path) go beside it; names must match `FILE_NAME` and may not be
    `monitoring.json`. Order: the files, monitoring.json, then LATEST, so that a reader never
    sees a LATEST whose export is incomplete. Then, with `keep`, the oldest exports beyond the
    newest `keep` are removed (`prune_exports`; a failure there is logged, not raised).
    """
    now = _utc(now or datetime.now(UTC))
    files = dict(files or {})
    for name in files:
        check_file_name(name)
        if name == REPORT_JSON:
            raise ValueError(f"{REPORT_JSON} is written from `report`, not from `files`")
    export_id = new_export_id(now)
    document = {
        **report,
        "export_id": export_id,
        "generated_at": report.get("generated_at") or now.isoformat(),
    }
    try:
        text = to_json(document)
    except ValueError as exc:
        raise ValueError(f"the monitoring report cannot be written as JSON: {exc}") from exc
    if len(text.encode("utf-8")) > MAX_REPORT_BYTES:
        raise ValueError(f"the monitoring report is larger than {MAX_REPORT_BYTES:,} bytes")
    try:
        MonitoringReport.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(_validation_message(exc, "the monitoring report")) from exc
    folder = export_dir(export_id)
    for name, content in files.items():
        if isinstance(content, Path):
            lake.put(content, f"{folder}/{name}")
        else:
            _write_bytes(lake, f"{folder}/{name}", bytes(content))
    lake.write_text(f"{folder}/{REPORT_JSON}", text)
    lake.write_text(LATEST, export_id + "\n")
    if keep is not None:
        try:
            prune_exports(lake, keep=keep)
        except Exception:
            log.warning("could not prune old monitoring exports", exc_info=True)
    return export_id


def prune_exports(lake: Lake, keep: int = KEEP_EXPORTS) -> list[str]:
    """Remove all but the newest `keep` exports (by id, which sorts by time), never the one
    `LATEST` names; folders whose names are not export ids are left alone. Returns the ids
    removed."""
    if keep < 1:
        raise ValueError("keep at least one export")
    ids = sorted(
        {
            name
            for name in (p.rstrip("/").rsplit("/", 1)[-1] for p in lake.glob(f"{EXPORTS}/*"))
            if EXPORT_ID.fullmatch(name)
        }
    )
    try:
        latest = read_latest_id(lake)
    except ExportError:
        latest = None
    removed = []
    for export_id in ids[: max(len(ids) - keep, 0)]:
        if export_id == latest:
            continue
        lake.remove(f"{EXPORTS}/{export_id}")
        removed.append(export_id)
    return removed


# --- reading ------------------------------------------------------------------------------------
def _read_limited(lake: Lake, rel: str, limit: int) -> bytes:
    """The bytes of `rel`, at most `limit` of them (ValueError beyond); FileNotFoundError."""
    with lake.open(rel) as fh:
        data = bytes(fh.read(limit + 1))
    if len(data) > limit:
        raise ValueError(f"{rel} is larger than {limit:,} bytes")
    return data


def read_latest_id(lake: Lake) -> str | None:
    """The export id `LATEST` names (None: nothing exported yet); ExportError(`latest`) when it
    names something else, ExportError(`lake`) when the lake cannot be read."""
    try:
        raw = _read_limited(lake, LATEST, MAX_LATEST_BYTES)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ExportError("latest", f"{LATEST} is not an export id: {exc}") from None
    except Exception as exc:
        raise ExportError("lake", f"cannot read {LATEST}: {exc}") from exc
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ExportError("latest", f"{LATEST} is not UTF-8 text") from None
    return check_export_id(text) if text else None


def load_export(lake: Lake, export_id: str) -> LoadedExport:
    """The export `export_id`, read and validated; ExportError (with its reason) otherwise."""
    rel = f"{export_dir(export_id)}/{REPORT_JSON}"
    try:
        data = _read_limited(lake, rel, MAX_REPORT_BYTES)
    except FileNotFoundError:
        raise ExportError("missing", f"export {export_id} has no {REPORT_JSON}") from None
    except ValueError as exc:
        raise ExportError("too_large", str(exc)) from None
    except Exception as exc:
        raise ExportError("lake", f"cannot read {rel}: {exc}") from exc
    try:
        report = MonitoringReport.model_validate_json(data)
    except ValidationError as exc:
        raise ExportError("invalid", _validation_message(exc, f"{rel}")) from None
    if report.export_id is not None and report.export_id != export_id:
        raise ExportError("invalid", f"{rel} says it is export {report.export_id}, not {export_id}")
    generated = report.generated_at or datetime.strptime(
        export_id.split("-", 1)[0], EXPORT_ID_FORMAT
    )
    return LoadedExport(export_id=export_id, report=report, generated_at=_utc(generated))


def read_latest(lake: Lake) -> LoadedExport | None:
    """The export `LATEST` names, validated (None: nothing exported yet); ExportError when it
    cannot be used (`reason` says why)."""
    export_id = read_latest_id(lake)
    return None if export_id is None else load_export(lake, export_id)


def export_files(lake: Lake, export_id: str) -> list[str]:
    """The names of an export's files (only names `FILE_NAME` allows), sorted."""
    folder = export_dir(export_id)
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in lake.glob(f"{folder}/*"))
    return sorted(name for name in names if FILE_NAME.fullmatch(name))


def read_export_file(
    lake: Lake, export_id: str, name: str, max_bytes: int = MAX_FILE_BYTES
) -> bytes:
    """One file of an export (both names validated first: ValueError / ExportError);
    FileNotFoundError when it is not there; ValueError when it is larger than `max_bytes`."""
    return _read_limited(lake, f"{export_dir(export_id)}/{check_file_name(name)}", max_bytes)


# --- decisions ----------------------------------------------------------------------------------
class DecisionRecord(Retrain):
    """A file of `monitoring/decisions/`: a decision, `decided_at` required."""

    decided_at: datetime


def record_decision(lake: Lake, decision: dict[str, Any]) -> str:
    """Write a retraining decision (monitoring.policy.Decision.record()) to
    `monitoring/decisions/<decided_at>.json` (its `decided_at`; now when it has none) and
    return that path. The record is validated first (ValueError naming the fields); what it
    holds beyond the known fields is written as well."""
    document = dict(decision)
    if document.get("decided_at") is None:
        document["decided_at"] = datetime.now(UTC).isoformat()
    try:
        text = to_json(document)
        record = DecisionRecord.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(_validation_message(exc, "the decision")) from exc
    if len(text.encode("utf-8")) > MAX_DECISION_BYTES:
        raise ValueError(f"the decision is larger than {MAX_DECISION_BYTES:,} bytes")
    rel = f"{DECISIONS}/{_utc(record.decided_at).strftime(DECISION_FORMAT)}.json"
    lake.write_text(rel, text)
    return rel


def read_decisions(lake: Lake, limit: int = 50) -> list[dict[str, Any]]:
    """The latest `limit` decisions, newest first, each as validated (JSON types: `decided_at`
    is ISO text). Files that are not valid decisions are skipped with a warning."""
    if limit <= 0:
        return []
    names = sorted(
        (
            name
            for name in (p.rsplit("/", 1)[-1] for p in lake.glob(f"{DECISIONS}/*.json"))
            if DECISION_NAME.fullmatch(name)
        ),
        reverse=True,
    )
    found: list[dict[str, Any]] = []
    for name in names[: limit + 100]:  # the malformed ones skipped, within reason
        if len(found) >= limit:
            break
        rel = f"{DECISIONS}/{name}"
        try:
            record = DecisionRecord.model_validate_json(
                _read_limited(lake, rel, MAX_DECISION_BYTES)
            )
        except FileNotFoundError:
            continue  # removed meanwhile
        except (ValueError, ValidationError) as exc:
            reason = _validation_message(exc, rel) if isinstance(exc, ValidationError) else str(exc)
            log.warning("skipping decision %s: %s", rel, reason)
            continue
        found.append(record.model_dump(mode="json", by_alias=True))
    return found


# --- alerts -------------------------------------------------------------------------------------
def record_alert(lake: Lake, payload: dict[str, Any], received_at: datetime) -> str:
    """Write an Alertmanager notification as received, with `receivedAt` (ISO UTC) added, to
    `monitoring/alerts/<YYYY-MM-DD>/<received_at>-<8 hex>.json`; returns that path."""
    received = _utc(received_at)
    rel = (
        f"{ALERTS}/{received.strftime('%Y-%m-%d')}/"
        f"{received.strftime(ALERT_FORMAT)}-{secrets.token_hex(4)}.json"
    )
    lake.write_text(rel, to_json({**payload, "receivedAt": received.isoformat()}))
    return rel
