"""The monitoring service: the lake's latest monitoring export as Prometheus metrics, the latest
report, and Alertmanager's webhook (`recsys monitor serve`; the `monitor` extra).

- A background task polls `monitoring/LATEST` every `RECSYS_MONITORING_POLL_SECONDS` and loads
  a new export when it changes (`ExportState.refresh`, in a worker thread). What the lake holds
  is not trusted (`monitoring.export` validates it); an export that cannot be loaded leaves the
  last good one served and counts `recsys_monitoring_export_load_failures_total{reason}`, once
  per export (or per bad LATEST): the same refused export is not read again until LATEST
  changes, except after a lake error, which is retried (and counted) at every poll.
- `GET /metrics`: the metrics of `monitoring.metrics_catalog`, from one collector
  (`ExportCollector`) that computes the gauges from the served export at scrape time: a new
  export replaces every labelled series at once (a feature gone from it is gone from the
  scrape). Label values come from the lake: feature names must match `FEATURE_LABEL`, snapshot
  versions `recsys.snapshots.check_version`, reasons `REASON_LABEL`; other rows are left out.
  A gauge with nothing to measure is NaN (the catalog's convention).
  `recsys_events_lag_seconds` and `recsys_published_snapshot_age_seconds` are the export's
  figures plus the time since the export was generated: they keep growing when monitoring
  stops running, as the real lag and age do.
- `POST /v1/alerts`: Alertmanager's webhook (payload version 4). With
  `RECSYS_MONITORING_WEBHOOK_TOKEN` set it needs `Authorization: Bearer <token>` (401
  otherwise, checked before the body is read). Bodies over `max_body_bytes` get 413, malformed
  ones 422 naming the field. Each notification is counted and kept in memory at once (the
  newest `MAX_RECENT_ALERTS` alerts, `GET /v1/alerts`) and written to the lake's
  `monitoring/alerts/` by one writer thread behind a bounded queue (`AlertRecorder`), so the
  answer (200) never waits for the lake: a write that fails, or that does not fit in the queue,
  is logged and lost from the lake only (the count and the in-memory list have it).
- `GET /v1/monitoring` (the export's validated monitoring.json), `GET /v1/report` (its
  report.html) and `GET /v1/report/{name}` (a file beside it: .png, .html): 404 with a message
  while no export is loaded. HTML from the lake is served with a Content-Security-Policy that
  runs no script and loads nothing from elsewhere (the report's images are inline data URIs).
- `GET /healthz` (always 200), `GET /readyz` (200 once an export is loaded, else 503 saying why).

Bad input never yields a 500: malformed requests get 422 with the field named.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import queue
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitoring import export
from monitoring.export import ExportError, LoadedExport, MonitoringReport
from monitoring.metrics_catalog import METRICS, RETRAIN_REASONS, STATUS_CODES, MetricSpec
from recsys.lake import Lake
from recsys.safe import safe_errors, safe_text
from recsys.settings import Settings, get_settings
from recsys.snapshots import InvalidVersion, check_version, shown

log = logging.getLogger("monitoring.service")

MAX_WEBHOOK_BYTES = 1_048_576
MAX_RECENT_ALERTS = 200
MAX_ALERTS_PER_NOTIFICATION = 1_000
ALERT_QUEUE = 1_000  # notifications waiting for the lake writer
MAX_ALERTNAMES = 200  # distinct alertname label values counted; the rest count as `other`
DEFAULT_POLL_SECONDS = 30.0

FEATURE_LABEL = re.compile(r"[A-Za-z0-9_.]{1,64}")
REASON_LABEL = re.compile(r"[a-z0-9_]{1,64}")
ALERTNAME_LABEL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MIX_FEATURES = ("event_mix", "categories")

# HTML from the lake: no script, nothing fetched from elsewhere, not framed
REPORT_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; sandbox"
)
REPORT_FILE = r"^[a-z0-9_]{1,64}\.(png|html)$"
NO_EXPORT = (
    "no monitoring export is loaded yet: `recsys monitor` writes one to the lake's "
    "monitoring/ and the service picks it up at its next poll"
)


# --- the served export --------------------------------------------------------------------------
class ExportState:
    """The export being served and how it got there; `refresh` runs in a worker thread, readers
    take `current` once (one attribute: swapped whole)."""

    def __init__(self, lake: Lake, on_load: Callable[[], None], on_failure: Callable[[str], None]):
        self.lake = lake
        self.current: LoadedExport | None = None
        self.last_error: str | None = None
        self._on_load = on_load
        self._on_failure = on_failure
        self._refused: str | None = None  # what was refused last (not retried while unchanged)
        self._lock = threading.Lock()  # one refresh at a time (poller, tests)

    def refresh(self) -> bool:
        """Load the export LATEST names if it is new; True when one was loaded."""
        with self._lock:
            try:
                export_id = export.read_latest_id(self.lake)
            except ExportError as exc:
                return self._refuse(str(exc), exc)
            if export_id is None:
                if self.current is None:
                    self.last_error = "the lake has no monitoring export yet"
                return False
            current = self.current
            if (current is not None and current.export_id == export_id) or (
                export_id == self._refused
            ):
                return False
            try:
                loaded = export.load_export(self.lake, export_id)
            except ExportError as exc:
                return self._refuse(export_id, exc)
            self.current = loaded
            self.last_error = None
            self._refused = None
            self._on_load()
            log.info("serving monitoring export %s", export_id)
            return True

    def _refuse(self, key: str, exc: ExportError) -> bool:
        if exc.reason != "lake":
            if key == self._refused:
                return False  # refused already, counted once
            self._refused = key
        self.last_error = str(exc)
        self._on_failure(exc.reason)
        log.warning(
            "monitoring export refused (%s)%s: %s",
            exc.reason,
            f"; still serving {self.current.export_id}" if self.current else "",
            safe_text(str(exc), 500),
        )
        return False

    @property
    def public_error(self) -> str | None:
        """Why nothing is served, as the answers may say it (bounded, printable)."""
        return safe_text(self.last_error, 300) if self.last_error else None


# --- metrics ------------------------------------------------------------------------------------
def _num(value: float | int | None) -> float:
    return math.nan if value is None else float(value)


def _epoch(moment: datetime | None) -> float:
    if moment is None:
        return math.nan
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return moment.timestamp()


def _day_epoch(day: date | int | None) -> float:
    if isinstance(day, date):
        return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    return math.nan  # a day number has no calendar date


def _feature_label(name: str) -> str | None:
    return name if FEATURE_LABEL.fullmatch(name) else None


def _version_label(version: str | None) -> str | None:
    if version is None:
        return None
    try:
        return check_version(version)
    except InvalidVersion:
        return None


def _day_key(day: date | int | None) -> tuple[int, float]:
    if day is None:
        return (0, 0.0)
    if isinstance(day, date):
        return (2, float(day.toordinal()))
    return (1, float(day))


Samples = list[tuple[tuple[str, ...], float]]


def export_samples(loaded: LoadedExport | None, now: float) -> dict[str, Samples]:
    """Every gauge's samples (label values, value) for the served export at time `now`."""
    out: dict[str, Samples] = {}

    def put(name: str, labels: tuple[str, ...], value: float) -> None:
        out.setdefault(name, []).append((labels, value))

    report: MonitoringReport | None = loaded.report if loaded else None
    if loaded is None or report is None:
        return out
    # drift
    drift = report.drift
    if drift is not None:
        for name, feature in drift.features.items():
            label = _feature_label(name)
            kind = feature.kind
            if label is None or kind is None or label in MIX_FEATURES:
                continue
            put("recsys_drift_psi", (label, kind), _num(feature.psi))
            put("recsys_drift_status", (label, kind), _status(feature.status))
            if kind == "numeric":
                put("recsys_drift_ks", (label,), _num(feature.ks))
        for name in MIX_FEATURES:
            mix = getattr(drift, name)
            if mix is not None:
                put("recsys_drift_psi", (name, "mix"), _num(mix.psi))
                put("recsys_drift_status", (name, "mix"), _status(mix.status))
    put("recsys_drift_overall_status", (), _status(drift.status if drift else None))
    # live performance: the latest day of each snapshot
    latest: dict[str, Any] = {}
    for row in report.live_performance:
        label = _version_label(row.snapshot_version)
        if label is None:
            continue
        if label not in latest or _day_key(row.day) >= _day_key(latest[label].day):
            latest[label] = row
    offline: dict[str, float | None] = {}
    for version, figures in report.offline.items():
        label = _version_label(version)
        if label is not None:
            offline[label] = figures.ndcg_at_10
            put("recsys_offline_ndcg_at_10", (label,), _num(figures.ndcg_at_10))
    for label, row in sorted(latest.items()):
        put("recsys_live_ndcg_at_10", (label,), _num(row.ndcg_at_10))
        put("recsys_live_recall_at_20", (label,), _num(row.recall_at_20))
        put("recsys_live_visitors", (label,), _num(row.n_visitors))
        base = offline.get(label)
        ratio = (
            row.ndcg_at_10 / base
            if row.ndcg_at_10 is not None and base is not None and base > 0
            else math.nan
        )
        put("recsys_live_ndcg_ratio", (label,), ratio)
    # freshness: as measured, plus the time since the export was made
    since = max(now - loaded.generated_at.timestamp(), 0.0)
    fresh = report.freshness
    lag = fresh.events_lag_seconds if fresh else None
    age = fresh.snapshot_age_seconds if fresh else None
    put("recsys_events_lag_seconds", (), math.nan if lag is None else lag + since)
    put("recsys_published_snapshot_age_seconds", (), math.nan if age is None else age + since)
    put("recsys_event_volume_ratio", (), _num(report.volume.ratio if report.volume else None))
    # business
    business = report.business
    put("recsys_business_ctr", (), _num(business.ctr if business else None))
    put("recsys_business_conversion_rate", (), _num(business.conversion_rate if business else None))
    put("recsys_business_revenue", (), _num(business.revenue if business else None))
    put("recsys_business_day_timestamp_seconds", (), _day_epoch(business.day if business else None))
    # the retraining decision
    retrain = report.retrain
    decision = retrain.decision if retrain else None
    put("recsys_retrain_decision", (), math.nan if decision is None else float(decision))
    if retrain is not None and decision is not None:
        given = {r for r in retrain.reasons if REASON_LABEL.fullmatch(r)}
        for reason in sorted(set(RETRAIN_REASONS) | given):
            put("recsys_retrain_reason", (reason,), 1.0 if reason in given else 0.0)
    put(
        "recsys_retrain_decided_timestamp_seconds",
        (),
        _epoch(retrain.decided_at if retrain else None),
    )
    put("recsys_monitoring_export_timestamp_seconds", (), loaded.generated_at.timestamp())
    return out


def _status(status: str | None) -> float:
    return math.nan if status is None else float(STATUS_CODES[status])


class Counters:
    """The catalog's counters, kept here (no `_created` series: the catalog names every series
    the service exposes), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, ...], float]] = {
            spec.name: {} for spec in METRICS if spec.type == "counter"
        }
        self._values["recsys_monitoring_export_loads_total"][()] = 0.0
        for reason in export.LOAD_FAILURE_REASONS:
            self._values["recsys_monitoring_export_load_failures_total"][(reason,)] = 0.0

    def inc(self, name: str, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        with self._lock:
            series = self._values[name]
            series[labels] = series.get(labels, 0.0) + amount

    def value(self, name: str, labels: tuple[str, ...] = ()) -> float:
        with self._lock:
            return self._values[name].get(labels, 0.0)

    def snapshot(self, name: str) -> list[tuple[tuple[str, ...], float]]:
        with self._lock:
            return sorted(self._values.get(name, {}).items())

    def series_count(self, name: str) -> int:
        with self._lock:
            return len(self._values[name])


class ExportCollector:
    """Yields every metric of the catalog: gauges from the served export, computed at scrape
    time (so a new export replaces them all at once), and the counters."""

    def __init__(
        self, state: ExportState, counters: Counters, clock: Callable[[], float] = time.time
    ) -> None:
        self.state = state
        self.counters = counters
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        for spec in METRICS:
            yield self._family(spec)

    def collect(self) -> Iterator[Metric]:
        samples = export_samples(self.state.current, self.clock())
        for spec in METRICS:
            family = self._family(spec)
            if spec.type == "counter":
                for labels, value in self.counters.snapshot(spec.name):
                    family.add_metric(list(labels), value)
            elif spec.name in samples:
                for labels, value in samples[spec.name]:
                    family.add_metric(list(labels), value)
            elif not spec.labels:
                family.add_metric([], math.nan)  # nothing to measure (or no export yet)
            yield family

    @staticmethod
    def _family(spec: MetricSpec) -> CounterMetricFamily | GaugeMetricFamily:
        if spec.type == "counter":
            return CounterMetricFamily(spec.name, spec.help, labels=list(spec.labels))
        return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


# --- Alertmanager's webhook ---------------------------------------------------------------------
LabelName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
LabelValue = Annotated[str, StringConstraints(max_length=1_024)]
AnnotationValue = Annotated[str, StringConstraints(max_length=8_192)]
Labels = Annotated[dict[LabelName, LabelValue], Field(max_length=64)]
Annotations = Annotated[dict[LabelName, AnnotationValue], Field(max_length=64)]
Url = Annotated[str, StringConstraints(max_length=2_048)]
AlertStatus = Literal["firing", "resolved"]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class WebhookAlert(_Payload):
    status: AlertStatus
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: Url | None = None
    fingerprint: Annotated[str, StringConstraints(max_length=64)] | None = None


class WebhookNotification(_Payload):
    """Alertmanager's webhook payload (version 4)."""

    version: Literal["4"]
    groupKey: Annotated[str, StringConstraints(max_length=4_096)] = ""
    truncatedAlerts: Annotated[int, Field(ge=0)] = 0
    status: AlertStatus
    receiver: Annotated[str, StringConstraints(max_length=256)]
    groupLabels: Labels = Field(default_factory=dict)
    commonLabels: Labels = Field(default_factory=dict)
    commonAnnotations: Annotations = Field(default_factory=dict)
    externalURL: Url = ""
    alerts: Annotated[list[WebhookAlert], Field(max_length=MAX_ALERTS_PER_NOTIFICATION)]


class ReceivedAlert(BaseModel):
    received_at: datetime
    receiver: str
    status: AlertStatus
    alertname: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    startsAt: datetime | None
    endsAt: datetime | None
    fingerprint: str | None
    generatorURL: str | None


class RecentAlerts(BaseModel):
    alerts: list[ReceivedAlert]


class AlertsAccepted(BaseModel):
    status: Literal["ok"] = "ok"
    alerts: int


class AlertRecorder:
    """Writes notifications to the lake from one thread, behind a bounded queue."""

    def __init__(self, lake: Lake, capacity: int = ALERT_QUEUE) -> None:
        self.lake = lake
        self.queue: queue.Queue[tuple[dict[str, Any], datetime] | None] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.written = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="alert-recorder", daemon=True
                )
                self._thread.start()

    def submit(self, payload: dict[str, Any], received_at: datetime) -> bool:
        """Queue a notification for the lake; False (logged) when the queue is full."""
        self.start()
        try:
            self.queue.put_nowait((payload, received_at))
        except queue.Full:
            self.dropped += 1
            log.error(
                "alert notification not written to the lake: %d are waiting already "
                "(the lake is slow or down)",
                self.queue.maxsize,
            )
            return False
        return True

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                payload, received_at = item
                try:
                    export.record_alert(self.lake, payload, received_at)
                    self.written += 1
                except Exception:
                    self.failed += 1
                    log.exception("could not write an alert notification to the lake")
            finally:
                self.queue.task_done()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued notification is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread = self._thread
        if thread is None or not thread.is_alive():
            return
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            log.error("alert recorder: queue still full at shutdown; unwritten alerts lost")
            return
        thread.join(timeout)


def _bearer_ok(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # digests: equal lengths, so the comparison does not leak the token's length either
    return hmac.compare_digest(
        hashlib.sha256(given.strip().encode("utf-8", "surrogatepass")).digest(),
        hashlib.sha256(token.encode("utf-8")).digest(),
    )


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


# --- the app ------------------------------------------------------------------------------------
class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    export_id: str | None = None
    generated_at: datetime | None = None
    detail: str | None = None


class ApiError(BaseModel):
    detail: Any


def _error(description: str) -> dict[str, Any]:
    return {"model": ApiError, "description": description}


def _not_found(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=404)


async def _poll(state: ExportState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(state.refresh)
        except Exception:  # never let the poller die: the next poll tries again
            log.exception("monitoring export poll failed")


@dataclass
class _Alertnames:
    """Bounded alertname label values: the first MAX_ALERTNAMES seen, then `other`."""

    seen: set[str]

    def label(self, name: str | None) -> str:
        if name is None or not ALERTNAME_LABEL.fullmatch(name):
            return "other"
        if name in self.seen:
            return name
        if len(self.seen) >= MAX_ALERTNAMES:
            return "other"
        self.seen.add(name)
        return name


def create_app(
    settings: Settings | None = None,
    *,
    lake: Lake | None = None,
    poll_seconds: float | None = None,
    max_body_bytes: int = MAX_WEBHOOK_BYTES,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The monitoring service over the lake of `settings` (the environment by default); `lake`,
    `poll_seconds` and `clock` may be given instead (tests)."""
    settings = settings or get_settings()
    lake = lake or Lake.from_settings(settings)
    interval = float(
        poll_seconds
        if poll_seconds is not None
        else getattr(settings, "recsys_monitoring_poll_seconds", DEFAULT_POLL_SECONDS)
    )
    secret = getattr(settings, "recsys_monitoring_webhook_token", None)
    token: str | None = secret.get_secret_value() if secret is not None else None
    counters = Counters()
    state = ExportState(
        lake,
        on_load=lambda: counters.inc("recsys_monitoring_export_loads_total"),
        on_failure=lambda reason: counters.inc(
            "recsys_monitoring_export_load_failures_total", (reason,)
        ),
    )
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ExportCollector(state, counters, clock))
    recorder = AlertRecorder(lake)
    recent: deque[ReceivedAlert] = deque(maxlen=MAX_RECENT_ALERTS)
    alertnames = _Alertnames(set())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        recorder.start()
        try:
            await anyio.to_thread.run_sync(state.refresh)
        except Exception:
            log.exception("first monitoring export load failed")
        if state.current is None:
            log.warning("starting without a monitoring export: %s", state.public_error)
        poller = asyncio.create_task(_poll(state, interval))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await anyio.to_thread.run_sync(recorder.stop)

    app = FastAPI(
        title="recsys monitoring",
        version="0.1.0",
        summary="The latest monitoring export as Prometheus metrics, its report, and "
        "Alertmanager's webhook.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load scripts from a public CDN; /openapi.json stays
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.lake = lake
    app.state.exports = state
    app.state.counters = counters
    app.state.registry = registry
    app.state.alert_recorder = recorder
    app.state.recent_alerts = recent

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = safe_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "type": ""}
        log.info(
            "422 on %s %s: %d error(s), first %s at %s",
            safe_text(request.method, 16),
            safe_text(request.url.path, 80),
            len(exc.errors()),
            first["type"],
            ".".join(str(part) for part in first["loc"]),
        )
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unexpected error on %s %s",
            safe_text(request.method, 16),
            safe_text(request.url.path, 200),
            exc_info=exc,
        )
        return JSONResponse({"detail": "internal error"}, status_code=500)

    # -- health and metrics
    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "no export is loaded"}},
        summary="A monitoring export is loaded",
    )
    async def readyz() -> Any:
        loaded = state.current
        if loaded is None:
            body = Readiness(
                status="not ready",
                detail=NO_EXPORT + (f" ({state.public_error})" if state.public_error else ""),
            )
            return JSONResponse(body.model_dump(mode="json"), status_code=503)
        return Readiness(
            status="ready", export_id=loaded.export_id, generated_at=loaded.generated_at
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text, served here directly (a mounted app would redirect to /metrics/)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- the export
    @app.get(
        "/v1/monitoring",
        tags=["monitoring"],
        response_model=MonitoringReport,
        response_model_by_alias=True,
        responses={404: _error("no export is loaded yet")},
        summary="The latest monitoring report (monitoring.json, validated)",
    )
    async def monitoring_report(response: Response) -> Any:
        loaded = state.current
        if loaded is None:
            return _not_found(NO_EXPORT)
        response.headers["X-Monitoring-Export"] = loaded.export_id
        return loaded.report

    def _file(name: str) -> Response:
        loaded = state.current
        if loaded is None:
            return _not_found(NO_EXPORT)
        try:
            data = export.read_export_file(lake, loaded.export_id, name)
        except FileNotFoundError:
            return _not_found(f"monitoring export {loaded.export_id} has no {name}")
        except ValueError as exc:  # larger than a report may be
            log.warning("refusing %s of export %s: %s", name, loaded.export_id, exc)
            return _not_found(f"monitoring export {loaded.export_id} has no usable {name}")
        except Exception:
            log.exception("cannot read %s of export %s", name, loaded.export_id)
            return JSONResponse(
                {"detail": "the lake could not be read; try again later"}, status_code=503
            )
        extension = name.rsplit(".", 1)[-1]
        headers = {
            "X-Monitoring-Export": loaded.export_id,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        }
        if extension == "html":
            headers["Content-Security-Policy"] = REPORT_CSP
        return Response(data, media_type=export.CONTENT_TYPES[extension], headers=headers)

    @app.get(
        "/v1/report",
        tags=["monitoring"],
        response_class=Response,
        responses={
            200: {"content": {"text/html": {}}, "description": "report.html"},
            404: _error("no export is loaded yet, or it has no report"),
        },
        summary="The latest monitoring report as HTML",
    )
    def report_html() -> Response:  # a plain def: the lake is read in the threadpool
        return _file(export.REPORT_HTML)

    @app.get(
        "/v1/report/{name}",
        tags=["monitoring"],
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}, "text/html": {}}, "description": "the file"},
            404: _error("no export is loaded yet, or it has no such file"),
            422: _error("`name` is not a report file's name"),
        },
        summary="A file of the latest report (its images)",
    )
    def report_file(
        name: Annotated[
            str,
            Path(
                pattern=REPORT_FILE,
                max_length=70,
                description="lowercase letters, digits and _, then .png or .html",
            ),
        ],
    ) -> Response:
        return _file(name)

    # -- alerts
    @app.post(
        "/v1/alerts",
        tags=["alerts"],
        response_model=AlertsAccepted,
        responses={
            401: _error("the webhook token is set and the request does not carry it"),
            413: _error(f"the body is larger than {max_body_bytes:,} bytes"),
            422: _error("the body is not an Alertmanager notification: `detail` names fields"),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": WebhookNotification.model_json_schema()}
                },
            }
        },
        summary="Alertmanager's webhook receiver",
    )
    async def receive_alerts(request: Request) -> Any:
        if token is not None and not _bearer_ok(request.headers.get("authorization"), token):
            return JSONResponse(
                {"detail": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            body = await _read_body(request, max_body_bytes)
        except _BodyTooLarge:
            return JSONResponse(
                {"detail": f"the request body is larger than {max_body_bytes:,} bytes"},
                status_code=413,
            )
        try:
            notification = WebhookNotification.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None
        received_at = datetime.fromtimestamp(clock(), UTC)
        for alert in notification.alerts:
            name = alert.labels.get("alertname")
            counters.inc(
                "recsys_monitoring_alerts_received_total",
                (alertnames.label(name), alert.status),
            )
            recent.append(
                ReceivedAlert(
                    received_at=received_at,
                    receiver=notification.receiver,
                    status=alert.status,
                    alertname=name,
                    labels=dict(alert.labels),
                    annotations=dict(alert.annotations),
                    startsAt=alert.startsAt,
                    endsAt=alert.endsAt,
                    fingerprint=alert.fingerprint,
                    generatorURL=alert.generatorURL,
                )
            )
        log.info(
            "alert notification from %s: %s, %d alert(s)",
            safe_text(notification.receiver, 64),
            notification.status,
            len(notification.alerts),
        )
        recorder.submit(notification.model_dump(mode="json"), received_at)
        return AlertsAccepted(alerts=len(notification.alerts))

    @app.get(
        "/v1/alerts",
        tags=["alerts"],
        response_model=RecentAlerts,
        summary="The alerts received lately, newest first",
    )
    async def recent_alerts(
        limit: Annotated[int, Query(ge=1, le=MAX_RECENT_ALERTS)] = 50,
    ) -> Any:
        newest = list(recent)[-limit:]
        newest.reverse()
        return RecentAlerts(alerts=newest)

    return app


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with the service's own `monitoring` loggers on the same handler."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["monitoring"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def serve(
    settings: Settings | None = None,
    host: str = "127.0.0.1",
    port: int = 8001,
    log_level: str = "info",
) -> None:
    """Run the service with uvicorn (one process; loopback by default: Prometheus and
    Alertmanager reach it through the pod's address, `--host 0.0.0.0`, in a cluster)."""
    import uvicorn

    settings = settings or get_settings()
    secret = getattr(settings, "recsys_monitoring_webhook_token", None)
    if secret is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s without RECSYS_MONITORING_WEBHOOK_TOKEN: anyone who reaches it "
            "can post alerts",
            shown(host),
        )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        log_config=_log_config(log_level),
        ws="none",
        limit_concurrency=256,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16_384,
    )
