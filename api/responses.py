"""JSON answers rendered by hand: the hot path skips response-model validation and re-encoding.

The bytes follow the route's declared `response_model` (the tests and the schema fuzzer check
that they do); `items` arrives pre-rendered from the answer cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

from fastapi import Request, Response

from api.middleware import header
from api.snapshot import Snapshot

JSON = "application/json"
# GET answers are fixed per snapshot and request: a client (or a cache in front of the service)
# may keep them, privately (they are a visitor's), and asks again with If-None-Match, answered
# 304 while the snapshot is the same. POST answers rank what the body says: never stored.
CACHE_CONTROL_GET = "private, no-cache"
CACHE_CONTROL_POST = "no-store"


def version_headers(snapshot: Snapshot | None) -> dict[str, str]:
    """`X-Snapshot-Version` / `X-Model-Version` of the snapshot that made the answer."""
    if snapshot is None:
        return {}
    return {"x-snapshot-version": snapshot.version, "x-model-version": snapshot.model_version}


def item_list(
    snapshot: Snapshot,
    key: str,
    key_value: int | None,
    items_json: bytes,
    strategy: str,
    headers: dict[str, str],
    impression_id: str,
    choice_json: bytes,
) -> Response:
    """`{<key>, items, strategy, impression_id, experiment, variant, snapshot_version,
    model_version}` as a response, with `headers` (the version headers among them) and
    `X-Impression-Id`."""
    body = b"".join(
        (
            b'{"',
            key.encode(),
            b'":',
            b"null" if key_value is None else str(int(key_value)).encode(),
            b',"items":',
            items_json,
            b',"strategy":"',
            strategy.encode(),  # one of the Strategy literals: nothing to escape
            b'","impression_id":"',
            impression_id.encode(),  # 32 hex characters (api.impressions)
            b'",',
            choice_json,
            b",",
            snapshot.versions_json,
            b"}",
        )
    )
    headers["x-impression-id"] = impression_id
    return Response(body, media_type=JSON, headers=headers)


def etag(snapshot: Snapshot, request_key: Hashable) -> str:
    """A weak ETag for the answer to `request_key` (the request's parsed parameters and the
    policy that answers them) from `snapshot`: its version and a digest of the parameters.
    Weak, because two answers to the same request differ in their `impression_id` while their
    lists are the same (RFC 9110: weak tags name semantically equivalent representations)."""
    digest = hashlib.blake2b(repr(request_key).encode(), digest_size=8).hexdigest()
    return f'W/"{snapshot.version}-{digest}"'


def not_modified(request: Request, tag: str) -> bool:
    """Whether the request's If-None-Match names `tag` (or is `*`); weak tags compare too, as
    RFC 9110 says for If-None-Match."""
    given = header(request.scope, b"if-none-match")
    if not given:
        return False
    if given.strip() == "*":
        return True
    opaque = tag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == opaque for t in given.split(","))


def cached_item_list(
    request: Request,
    snapshot: Snapshot,
    request_key: Hashable,
    key: str,
    key_value: int | None,
    items_json: bytes,
    strategy: str,
    impression_id: str,
    choice_json: bytes,
) -> Response:
    """`item_list` for a GET: with its ETag and Cache-Control, or a 304 without a body when
    the client already holds it (the client shows its copy again: the 304 is an impression
    too, named in `X-Impression-Id`)."""
    tag = etag(snapshot, request_key)
    headers = {**version_headers(snapshot), "etag": tag, "cache-control": CACHE_CONTROL_GET}
    if not_modified(request, tag):
        headers["x-impression-id"] = impression_id
        return Response(status_code=304, headers=headers)
    return item_list(
        snapshot, key, key_value, items_json, strategy, headers, impression_id, choice_json
    )
