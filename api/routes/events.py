"""Events: accepted, written durably to the lake's landing area for the next ingest."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from api import events
from api.deps import AppMetrics, Store, caller_of
from api.routes.recommendations import VERSION_HEADERS
from api.schemas import MAX_EVENTS, ApiError, Event, EventBatch, EventsAccepted
from recsys.settings import Settings

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.post(
    "",
    status_code=202,
    response_model=EventsAccepted,
    responses={
        202: {"headers": VERSION_HEADERS},
        409: {
            "model": ApiError,
            "description": "the Idempotency-Key was already used with a different body",
        },
        413: {"model": ApiError, "description": "the body is too large"},
    },
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
            "and body lands the events once; another body under a used key is a 409. Keys are "
            "per API key: other callers' keys never meet yours",
        ),
    ] = None,
) -> Any:
    """One event or a batch in the RetailRocket layout. The answer is 202 only once the batch
    is written and fsynced to `landing/events/` (one S3 PUT on S3), where the next `recsys
    ingest` picks it up exactly once. An invalid event is a 422 naming the field (its index in
    a batch).

    Events do not need a snapshot: they are accepted before the first one is published.

    Send an `Idempotency-Key` to retry safely: every request with the same key has the same
    `batch_id`, and its events reach the warehouse once. **Without a key, a retry lands its
    events twice** (a request that timed out may well have been stored): the answer says so
    (`retry_safe: false`), flags a body the same caller sent a moment ago
    (`possible_duplicate`), and the service counts such repeats
    (`recsys_events_unkeyed_repeats_total`).
    """
    # a plain `def`: the write and the fsync block
    rows = batch if isinstance(batch, list) else [batch]
    settings: Settings = request.app.state.settings
    _refuse_future(rows, isinstance(batch, list), settings)
    text = events.to_csv(
        [
            (e.timestamp, e.visitorid, e.event, e.itemid, e.transactionid, e.impression_id)
            for e in rows
        ]
    )
    lake = request.app.state.lake
    if idempotency_key:
        batch_id = events.keyed_batch_id(caller_of(request), idempotency_key)
        try:
            events.land_once(lake, batch_id, text)
        except events.IdempotencyConflict as exc:
            raise HTTPException(409, detail=str(exc)) from None
        repeated = False
    else:
        batch_id = events.new_batch_id()
        events.land(lake, batch_id, text)
        repeated = request.app.state.recent_batches.seen(caller_of(request), text)
        if repeated:
            metrics.events_repeated.inc()
    metrics.events_accepted.inc(len(rows))
    snapshot = store.current if store is not None else None
    return EventsAccepted(
        accepted=len(rows),
        batch_id=batch_id,
        snapshot_version=snapshot.version if snapshot else None,
        model_version=snapshot.model_version if snapshot else None,
        retry_safe=bool(idempotency_key),
        possible_duplicate=repeated,
        note=None if idempotency_key else NO_KEY_NOTE,
    )


NO_KEY_NOTE = (
    "sent without an Idempotency-Key: if you send this request again (say, after a timeout), "
    "its events land twice; send a key to retry safely"
)


def _refuse_future(rows: list[Event], is_batch: bool, settings: Settings) -> None:
    """422 for events later than this server's clock plus the allowed skew: one event from 2099
    would otherwise move every later training window to 2099 (ingest rejects them too)."""
    limit, skew_seconds = settings.max_event_timestamp_ms(), settings.recsys_max_clock_skew_seconds
    errors = [
        {
            "type": "less_than_equal",
            "loc": ("body", "events", i, "timestamp")
            if is_batch
            else ("body", "event", "timestamp"),
            "msg": f"is later than this server's clock allows (now + {skew_seconds} s)",
            "input": event.timestamp,
        }
        for i, event in enumerate(rows)
        if event.timestamp > limit
    ]
    if errors:
        raise RequestValidationError(errors)
