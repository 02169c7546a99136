"""Items: what is similar to an item."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api import loop, recommend
from api.deps import SimilarParams, snapshot_of
from api.metrics import Metrics
from api.responses import cached_item_list
from api.routes.recommendations import (
    CACHEABLE_RESPONSES,
    INVALID_RESPONSE,
    NO_SNAPSHOT_RESPONSE,
    to_cached,
)
from api.schemas import SimilarItems

router = APIRouter(prefix="/v1/items", tags=["items"])


@router.get(
    "/{item_id}/similar",
    response_model=SimilarItems,
    responses={**CACHEABLE_RESPONSES, **INVALID_RESPONSE, **NO_SNAPSHOT_RESPONSE},
    openapi_extra={"parameters": SimilarParams.openapi()},
    summary="Items similar to an item",
)
async def similar_items(request: Request) -> Response:
    """Available items similar to the item (ALS item factors), best first (`similar`); filled
    up with popular items of its category, then overall (`popular` when the item has no
    similar items)."""
    # `async`, parameters validated here: a lookup in memory, like the visitor route
    params = SimilarParams.parse(request)
    item_id, k = params.item_id, params.k
    snapshot = snapshot_of(request)
    metrics: Metrics = request.app.state.metrics
    key = (item_id, k)
    cached = snapshot.similar_cache.get(key)
    metrics.count_cache("similar", cached is not None)
    if cached is None:
        cached = to_cached(recommend.similar_to(snapshot, item_id, k), snapshot)
        snapshot.similar_cache.put(key, cached)
    strategy, items, logged_items = cached
    metrics.count_answer("similar", strategy)
    impression_id = request.app.state.impressions.ids.new()
    # similar items are never split by an experiment: the control's policy, no experiment
    loop.log(
        request,
        impression_id,
        snapshot,
        loop.CONTROL,
        "similar",
        None,
        strategy,
        logged_items,
        anchor_item_id=item_id,
    )
    return cached_item_list(
        request,
        snapshot,
        (item_id, k),
        "item_id",
        item_id,
        items,
        strategy,
        impression_id,
        loop.CONTROL.json,
    )
