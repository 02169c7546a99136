"""Apps over hand-made snapshots in a temporary lake (see tests/api_snapshots.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from recsys.lake import Lake
from recsys.settings import Settings
from tests.api_snapshots import World, publish_world

KEY = "k" * 8 + "-test-key-0123456789"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a data dir, whatever the environment says about the lake or keys."""
    values: dict[str, Any] = {
        "recsys_data_dir": data_dir,
        "recsys_lake_uri": None,
        "recsys_api_keys": None,
        "recsys_api_cache_dir": None,
        # the background poll stays out of the way; tests refresh when they mean to
        "recsys_api_poll_seconds": 3600.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One lake with the default world published, shared by a module's read-only tests."""
    settings = make_settings(tmp_path_factory.mktemp("shop"))
    publish_world(Lake.from_settings(settings))
    return settings


@pytest.fixture(scope="module")
def client(shop: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(shop)) as test_client:
        yield test_client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:  # overrides tests/conftest.py's for these tests
    return make_settings(tmp_path / "data")


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake.from_settings(settings)


@pytest.fixture
def client_for(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """A started app over a fresh lake holding `world` (None: no snapshot at all)."""
    started: list[TestClient] = []

    def start(world: World | None = None, **overrides: Any) -> TestClient:
        settings = make_settings(tmp_path / f"data{len(started)}", **overrides)
        if world is not None:
            publish_world(Lake.from_settings(settings), world)
        test_client = TestClient(create_app(settings))
        test_client.__enter__()
        started.append(test_client)
        return test_client

    yield start
    for test_client in started:
        test_client.__exit__(None, None, None)


def items(response: Any) -> list[int]:
    return [row["item_id"] for row in response.json()["items"]]


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
