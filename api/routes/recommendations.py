"""Recommendations for a visitor (precomputed) and for a session (ranked now)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api import loop, recommend
from api.cache import CachedAnswer
from api.deps import AppMetrics, VisitorParams, snapshot_of
from api.impressions import items_json
from api.metrics import Metrics
from api.responses import CACHE_CONTROL_POST, cached_item_list, item_list, version_headers
from api.schemas import ApiError, RecommendationList, RecommendationRequest
from api.snapshot import Snapshot

router = APIRouter(prefix="/v1/recommendations", tags=["recommendations"])

NO_SNAPSHOT_RESPONSE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ApiError,
        "description": "no snapshot is loaded yet",
        "headers": {
            "Retry-After": {
                "description": "seconds until the service looks for a snapshot again",
                "schema": {"type": "integer"},
            }
        },
    }
}
# every answer names the snapshot being served (ServiceMiddleware adds them where a route did not)
VERSION_HEADERS: dict[str, Any] = {
    "X-Snapshot-Version": {
        "description": "the snapshot that made the answer",
        "schema": {"type": "string"},
    },
    "X-Model-Version": {"description": "its ranker's version", "schema": {"type": "string"}},
}
# the GET answers: fixed per snapshot and request, so tagged and revalidated (api.responses)
CACHEABLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            **VERSION_HEADERS,
            "ETag": {
                "description": "the snapshot's version and the request's parameters",
                "schema": {"type": "string"},
            },
            "Cache-Control": {"description": "private, no-cache", "schema": {"type": "string"}},
        }
    },
    304: {"description": "Not Modified: If-None-Match names the current answer's ETag"},
}
RANKED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            **VERSION_HEADERS,
            "Cache-Control": {"description": "no-store", "schema": {"type": "string"}},
        }
    }
}
# for the routes that validate their own parameters (see api.deps)
INVALID_RESPONSE: dict[int | str, dict[str, Any]] = {
    422: {"model": ApiError, "description": "Validation Error"}
}


@router.get(
    "/{visitor_id}",
    response_model=RecommendationList,
    responses={**CACHEABLE_RESPONSES, **INVALID_RESPONSE, **NO_SNAPSHOT_RESPONSE},
    openapi_extra={"parameters": VisitorParams.openapi()},
    summary="A visitor's recommendations",
)
async def recommendations_for_visitor(request: Request) -> Response:
    """The visitor's published list (`personalized`), filtered and refilled to `k` items from
    the visitor's ALS candidates, then popular items. A visitor without a list gets the items
    similar to their latest ones (`session`), or popular items (`popular`): never an error.
    Bought and unavailable items never appear.
    """
    # `async` on purpose: the answer is a few array lookups in memory (microseconds), cheaper
    # than a hop to the threadpool; nothing here blocks. The parameters are validated here,
    # not declared to FastAPI (see api.deps); OpenAPI lists them all the same.
    params = VisitorParams.parse(request)
    snapshot = snapshot_of(request)
    metrics: Metrics = request.app.state.metrics
    visitor_id, k, category_id, excluded = (
        params.visitor_id,
        params.k,
        params.category_id,
        params.excluded,
    )
    choice = loop.choose(request, "visitor", visitor_id)
    known = visitor_id in snapshot.recs or visitor_id in snapshot.interactions
    # an unknown visitor's list is everyone's (popular items), except when interleaving: its
    # coin flips are the visitor's own
    shared = not known and choice.sides is None
    key = (choice.policy, None if shared else visitor_id, k, category_id, excluded)
    cached = snapshot.cache.get(key)
    metrics.count_cache("recommendations", cached is not None)
    if cached is None:
        answer = loop.answer(snapshot, choice, "visitor", visitor_id, (), k, category_id, excluded)
        cached = to_cached(answer, snapshot)
        snapshot.cache.put(key, cached)
    strategy, items, logged_items = cached
    metrics.count_answer("visitor", strategy)
    impression_id = request.app.state.impressions.ids.new()
    loop.log(
        request, impression_id, snapshot, choice, "visitor", visitor_id, strategy, logged_items
    )
    return cached_item_list(
        request,
        snapshot,
        (choice.policy, visitor_id, k, category_id, excluded),
        "visitor_id",
        visitor_id,
        items,
        strategy,
        impression_id,
        choice.json,
    )


@router.post(
    "",
    response_model=RecommendationList,
    responses={
        **RANKED_RESPONSES,
        413: {"model": ApiError, "description": "the body is too large"},
        **NO_SNAPSHOT_RESPONSE,
    },
    summary="Rank now, with the session's items",
)
async def recommendations_for_session(
    request: RecommendationRequest, http: Request, metrics: AppMetrics
) -> Response:
    """Candidates from the visitor's ALS list and from the items similar to the session's
    latest items, scored now by the snapshot's CatBoost ranker on the features the snapshot
    carries. `personalized` for a visitor with ALS candidates, `session` for anyone else with
    a session (or history), `popular` when there is nothing to go on.
    """
    # The snapshot is looked up after the body is valid: a bad request is a 422 with or
    # without a snapshot, as on GET. With the ranker's trees compiled (api.trees) the answer
    # is ~0.3 ms of numpy, cheaper than a hop to the threadpool and back; CatBoost itself
    # takes about a millisecond, which must not block the event loop.
    snapshot = snapshot_of(http)
    if snapshot.ranker.compiled is None:
        return await run_in_threadpool(rank_session, request, http, metrics, snapshot)
    return rank_session(request, http, metrics, snapshot)


def rank_session(
    request: RecommendationRequest, http: Request, metrics: Metrics, snapshot: Snapshot
) -> Response:
    """The POST's answer, as a response (see `recommendations_for_session`)."""
    choice = loop.choose(http, "session", request.visitor_id)
    answer = loop.answer(
        snapshot,
        choice,
        "session",
        request.visitor_id,
        request.session_item_ids,
        request.k,
        request.category_id,
        tuple(request.exclude_item_ids),
    )
    metrics.count_answer("session", answer.strategy)
    impression_id = http.app.state.impressions.ids.new()
    loop.log(
        http,
        impression_id,
        snapshot,
        choice,
        "session",
        request.visitor_id,
        answer.strategy,
        items_json(answer.item_ids, answer.sources, answer.teams),
    )
    return item_list(
        snapshot,
        "visitor_id",
        request.visitor_id,
        answer.items_json(snapshot),
        answer.strategy,
        {**version_headers(snapshot), "cache-control": CACHE_CONTROL_POST},
        impression_id,
        choice.json,
    )


def to_cached(answer: recommend.Answer, snapshot: Snapshot) -> CachedAnswer:
    """What the answer cache keeps of an answer: what the response needs (strategy, the
    rendered items) and what its impressions record (the items with rank, source and team,
    rendered once here rather than once per impression)."""
    return (
        answer.strategy,
        answer.items_json(snapshot),
        items_json(answer.item_ids, answer.sources, answer.teams),
    )
