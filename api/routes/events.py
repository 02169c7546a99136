"""Events: accepted, written durably to the lake's landing area for the next ingest."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request

from api import events
from api.deps import AppMetrics, Store
from api.schemas import MAX_EVENTS, ErrorMessage, EventBatch, EventsAccepted

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.post(
    "",
    status_code=202,
    response_model=EventsAccepted,
    responses={413: {"model": ErrorMessage, "description": "the body is too large"}},
    summary="Send events",
)
def post_events(
    batch: Annotated[
        EventBatch,
        Body(description=f"one event, or a list of 1 to {MAX_EVENTS} events"),
    ],
    request: Request,
    store: Store,
    metrics: AppMetrics,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=events.IDEMPOTENCY_KEY_PATTERN,
            description="any 1-128 characters of A-Z a-z 0-9 . _ : -; a retry with the same key "
            "lands the events once (the last body sent with a key is kept)",
        ),
    ] = None,
) -> Any:
    """One event or a batch in the RetailRocket layout. The answer is 202 only once the batch
    is written and fsynced to `landing/events/` (one S3 PUT on S3), where the next `recsys
    ingest` picks it up exactly once. An invalid event is a 422 naming the field (its index in
    a batch).

    Events do not need a snapshot: they are accepted before the first one is published.

    Send an `Idempotency-Key` to retry safely: every request with the same key has the same
    `batch_id`, and its events reach the warehouse once.
    """
    # a plain `def`: the write and the fsync block
    rows = batch if isinstance(batch, list) else [batch]
    text = events.to_csv(
        [(e.timestamp, e.visitorid, e.event, e.itemid, e.transactionid) for e in rows]
    )
    batch_id = events.keyed_batch_id(idempotency_key) if idempotency_key else events.new_batch_id()
    events.land(request.app.state.lake, batch_id, text)
    metrics.events_accepted.inc(len(rows))
    snapshot = store.current if store is not None else None
    return EventsAccepted(
        accepted=len(rows),
        batch_id=batch_id,
        snapshot_version=snapshot.version if snapshot else None,
        model_version=snapshot.model_version if snapshot else None,
    )
