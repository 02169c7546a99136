"""The last resort: an unexpected error is logged and answered with a plain 500 JSON."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from api import recommend
from api.main import create_app
from recsys.settings import Settings


def test_a_bug_is_a_logged_500_with_no_details(
    shop: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    with TestClient(create_app(shop), raise_server_exceptions=False) as client:
        monkeypatch.setattr(recommend, "for_session", broken)  # after start-up: warming uses it
        response = client.post("/v1/recommendations", json={"visitor_id": 1})
        assert response.status_code == 500
        assert response.json() == {"detail": "internal error"}
        assert "secret" not in response.text
        count = 'recsys_http_request_duration_seconds_count{method="POST",'
        assert (
            f'{count}route="/v1/recommendations",status="500"}} 1.0' in client.get("/metrics").text
        )
    assert "unexpected error on POST /v1/recommendations" in caplog.text
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
