"""JSON answers rendered by hand: the hot path skips response-model validation and re-encoding.

The bytes follow the route's declared `response_model` (the tests and the schema fuzzer check
that they do); `items` arrives pre-rendered from the answer cache.
"""

from __future__ import annotations

from fastapi import Response

from api.snapshot import Snapshot

JSON = "application/json"


def version_headers(snapshot: Snapshot | None) -> dict[str, str]:
    """`X-Snapshot-Version` / `X-Model-Version` of the snapshot that made the answer."""
    if snapshot is None:
        return {}
    return {"x-snapshot-version": snapshot.version, "x-model-version": snapshot.model_version}


def item_list(
    snapshot: Snapshot, key: str, key_value: int | None, items_json: bytes, strategy: str
) -> Response:
    """`{<key>, items, strategy, snapshot_version, model_version}` as a response."""
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
            b'",',
            snapshot.versions_json,
            b"}",
        )
    )
    return Response(body, media_type=JSON, headers=version_headers(snapshot))
