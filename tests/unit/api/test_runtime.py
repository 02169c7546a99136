"""Process-wide settings the service makes when it starts."""

from __future__ import annotations

import gc
import sys

from fastapi.testclient import TestClient

from api.main import GIL_SWITCH_INTERVAL, create_app
from recsys.settings import Settings


def test_threads_hand_the_gil_over_within_a_millisecond(client: TestClient) -> None:
    # the app is started (the fixture): a snapshot loading in a worker thread cannot hold
    # the GIL for Python's default 5 ms while a request waits for it
    assert client.get("/healthz").status_code == 200
    assert sys.getswitchinterval() <= GIL_SWITCH_INTERVAL <= 0.001


def test_what_start_up_made_is_left_out_of_collections(shop: Settings) -> None:
    gc.unfreeze()
    with TestClient(create_app(shop)) as started:
        assert started.get("/healthz").status_code == 200
        # start-up's objects are frozen: a full collection does not walk them
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0  # and given back to the collector when the app stops
