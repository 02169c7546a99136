"""Liveness, readiness and metrics: open without a key, for probes and Prometheus."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import NO_SNAPSHOT, AppMetrics, Store
from api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz(store: Store) -> Any:
    snapshot = store.current if store is not None else None
    return Health(
        status="ok",
        snapshot_version=snapshot.version if snapshot else None,
        model_version=snapshot.model_version if snapshot else None,
    )


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "no valid snapshot is loaded"}},
    summary="A valid snapshot is loaded",
)
async def readyz(store: Store) -> Any:
    """200 once a snapshot is loaded (it was verified before it was loaded), else 503."""
    snapshot = store.current if store is not None else None
    if snapshot is None:
        reason = store.public_error if store is not None else "the service is starting"
        body = Readiness(
            status="not ready", detail=NO_SNAPSHOT + (f" ({reason})" if reason else "")
        )
        return JSONResponse(body.model_dump(), status_code=503)
    return Readiness(
        status="ready",
        snapshot_version=snapshot.version,
        model_version=snapshot.model_version,
        feature_version=snapshot.feature_version,
        cutoff_at=snapshot.cutoff_at.strftime("%Y-%m-%dT%H:%M:%SZ"),  # UTC
        snapshot_age_seconds=round(time.time() - snapshot.cutoff_epoch, 3),
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(metrics: AppMetrics) -> Response:
    """Prometheus text format, served here directly (a mounted app would redirect to
    `/metrics/`)."""
    return Response(generate_latest(metrics.exposed), media_type=CONTENT_TYPE_LATEST)
