"""Process-wide settings the service makes when it starts."""

from __future__ import annotations

import sys

from fastapi.testclient import TestClient

from api.main import GIL_SWITCH_INTERVAL


def test_threads_hand_the_gil_over_within_a_millisecond(client: TestClient) -> None:
    # the app is started (the fixture): a snapshot loading in a worker thread cannot hold
    # the GIL for Python's default 5 ms while a request waits for it
    assert client.get("/healthz").status_code == 200
    assert sys.getswitchinterval() <= GIL_SWITCH_INTERVAL <= 0.001
