"""Process-wide settings the service makes when it starts."""

from __future__ import annotations

import gc
import os
import sys
import threading

import pytest
from fastapi.testclient import TestClient

from api.main import GIL_SWITCH_INTERVAL, LOADER_NICENESS, create_app, snapshot_loader
from api.store import SnapshotStore
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_snapshots_load_in_a_thread_of_their_own_at_a_lower_priority(shop: Settings) -> None:
    """The loader's thread runs LOADER_NICENESS below the requests' (the threadpool's threads,
    which answer POST requests, keep theirs), and the store's refreshes run in it."""

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    loader = snapshot_loader()
    try:
        assert loader.submit(nice).result() == min(nice() + LOADER_NICENESS, 19)
        assert loader.submit(threading.current_thread).result().name.startswith("snapshot-")
    finally:
        loader.shutdown()
    seen: list[str] = []
    real = SnapshotStore.refresh

    def refresh(self: SnapshotStore) -> bool:
        seen.append(threading.current_thread().name)
        return real(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SnapshotStore, "refresh", refresh)
        with TestClient(create_app(shop)) as started:
            assert started.get("/readyz").status_code == 200
    assert seen and all(name.startswith("snapshot-loader") for name in seen)
