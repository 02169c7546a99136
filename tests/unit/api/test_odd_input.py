"""Odd input is a 422 naming the field, never a 500, never an echo, never a flood of logs.

JSON that Python's parser accepts but no client should send (NaN, Infinity, a float that
overflows, lone surrogate code points in keys or strings), JSON it cannot parse (an integer of
thousands of digits, nesting thousands deep), and ids written loosely in paths and queries
(`1_000`, `+5`, other scripts' digits).
"""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

EVENT = '{"timestamp": 1433223532117, "visitorid": 7, "event": "view", "itemid": 8}'
BAD_BODIES = [
    # (route, raw JSON body, where the error is)
    ("/v1/recommendations", '{"k": NaN}', ["body", "k"]),
    ("/v1/recommendations", '{"k": Infinity}', ["body", "k"]),
    ("/v1/recommendations", '{"visitor_id": -Infinity}', ["body", "visitor_id"]),
    ("/v1/recommendations", '{"k": 1e400}', ["body", "k"]),
    ("/v1/recommendations", '{"session_item_ids": [1, NaN]}', ["body", "session_item_ids", 1]),
    # pydantic refuses a key it cannot read as text before it looks at the fields
    ("/v1/recommendations", '{"\\ud800": 1}', ["body"]),
    ("/v1/recommendations", '{"\\udc00x\\ud800": NaN}', ["body"]),
    ("/v1/events", EVENT.replace("1433223532117", "NaN"), ["body", "event", "timestamp"]),
    ("/v1/events", EVENT.replace('"view"', '"\\udfff"'), ["body", "event", "event"]),
    ("/v1/events", f"[{EVENT}, {EVENT.replace('7', 'Infinity', 1)}]", None),
    ("/v1/events", '{"\\ud83d": NaN}', None),
]


def post_raw(client: TestClient, route: str, body: str | bytes) -> object:
    content = body.encode() if isinstance(body, str) else body
    return client.post(route, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize(("route", "body", "where"), BAD_BODIES)
def test_non_finite_numbers_and_lone_surrogates_are_a_422_naming_the_field(
    client: TestClient, route: str, body: str, where: list[object] | None
) -> None:
    response = post_raw(client, route, body)
    assert response.status_code == 422, response.text  # type: ignore[attr-defined]
    detail = response.json()["detail"]  # type: ignore[attr-defined]
    assert detail and all(set(e) == {"type", "loc", "msg"} for e in detail)  # no input echoed
    if where is not None:
        assert any(e["loc"] == where for e in detail), detail
    json.dumps(detail).encode("utf-8")  # what came back is plain, encodable JSON


def test_a_refused_request_writes_one_bounded_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    huge_key = "\\ud800" * 5_000
    response = post_raw(client, "/v1/recommendations", '{"' + huge_key + '": NaN}')
    assert response.status_code == 422  # type: ignore[attr-defined]
    ours = [r for r in caplog.records if r.name.startswith("api")]
    assert len(ours) == 1 and len(ours[0].getMessage()) < 400
    assert not any(r.exc_info for r in caplog.records)


def test_a_batch_of_bad_events_gets_a_bounded_answer(client: TestClient) -> None:
    batch = "[" + ",".join([EVENT.replace('"view"', '"nope"')] * 1_000) + "]"
    response = post_raw(client, "/v1/events", batch)
    assert response.status_code == 422  # type: ignore[attr-defined]
    detail = response.json()["detail"]  # type: ignore[attr-defined]
    assert len(detail) == 20 and detail[0]["loc"] == ["body", "events", 0, "event"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"k": ' + "1" * 4_400 + "}", "too many digits"),
        ("[" * 100_000 + "]" * 100_000, "nested too deep"),
        (b'{"k": "\xff"}', "not UTF-8"),
        ("{broken", "JSON decode error"),
    ],
)
def test_unparsable_json_is_a_422_too(client: TestClient, body: str | bytes, says: str) -> None:
    for route in ("/v1/recommendations", "/v1/events"):
        response = post_raw(client, route, body)
        assert response.status_code == 422, (route, response.text)  # type: ignore[attr-defined]
        (error,) = response.json()["detail"]  # type: ignore[attr-defined]
        assert error["type"] == "json_invalid" and says in error["msg"]


@pytest.mark.parametrize("loose", ["1_001", "+1001", "%201001", "1001%20", "\uff11001", "0x3e9"])
def test_ids_in_paths_and_queries_are_plain_digits(client: TestClient, loose: str) -> None:
    for url in (
        f"/v1/recommendations/{loose}",
        f"/v1/recommendations/1001?k={loose}",
        f"/v1/recommendations/1001?category_id={loose}",
        f"/v1/items/{loose}/similar",
        f"/v1/items/1001/similar?k={loose}",
    ):
        response = client.get(url)
        assert response.status_code == 422, url
        (error,) = response.json()["detail"]
        assert "digits 0-9" in error["msg"] and error["loc"][0] in ("path", "query")
    assert client.get("/v1/recommendations/1001?k=5&category_id=7").status_code == 200
    assert client.get("/v1/items/0001001/similar?k=05").status_code == 200


def test_control_characters_never_reach_the_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert client.get("/v1/items/1%1b[31m%00/similar").status_code == 422
    assert caplog.records and all(
        "\x1b" not in r.getMessage() and "\x00" not in r.getMessage() for r in caplog.records
    )


def test_an_odd_content_length_is_a_413_not_a_500(client: TestClient) -> None:
    """uvicorn's parsers refuse these first; the app must not fail on them either (another
    server, or a test client, may pass them on)."""
    import asyncio

    app = client.app
    for declared in (b"\xb2", b"1" * 5_000, b"-1", b" 12"):
        sent: list[dict[str, object]] = []
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/recommendations",
            "raw_path": b"/v1/recommendations",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"content-length", declared)],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict[str, object], sent: list[dict[str, object]] = sent) -> None:
            sent.append(message)

        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
        assert sent[0]["status"] == 413, declared[:10]
