"""A client author's view: a typed Python client generated from the served OpenAPI spec
(openapi-python-client, as the issue's engineer did), calling every route and handling the
errors with the declared models, with no hand-made types. Generated from the spec of a service
with API keys and of one without, since both are what a client author may meet."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from recsys.lake import Lake
from tests.api_snapshots import publish_world
from tests.unit.api.conftest import KEY, make_settings

GENERATOR = Path(sys.executable).with_name("openapi-python-client")


def generate(spec: dict[str, Any], out: Path) -> ModuleType:
    """The client package generated from `spec` into `out` (its name: the folder's), imported."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_file = out.parent / f"{out.name}.json"
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "PATH": os.pathsep.join([str(GENERATOR.parent), os.environ["PATH"]])}
    made = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            *("--path", str(spec_file)),
            *("--meta", "none"),
            *("--output-path", str(out)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0 and (out / "client.py").is_file(), made.stdout + made.stderr
    sys.path.insert(0, str(out.parent))
    try:
        return importlib.import_module(out.name)
    finally:
        sys.path.remove(str(out.parent))


def module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, TestClient]]:
    """A client generated from a service with keys, and that service (snapshot published)."""
    data = tmp_path_factory.mktemp("keyed") / "data"
    settings = make_settings(data, recsys_api_keys=KEY)
    publish_world(Lake.from_settings(settings))
    app = create_app(settings)
    with TestClient(app) as service:
        package = generate(service.get("/openapi.json").json(), data.parent / "keyed_client")
        yield package, service


def typed_client(package: ModuleType, service: TestClient, key: str | None) -> Any:
    """The generated AuthenticatedClient over the in-process service (its httpx client); the
    key header as the generated client would send it (auth_header_name, no prefix)."""
    client = package.AuthenticatedClient(
        base_url=str(service.base_url), token=key or "", prefix="", auth_header_name="X-API-Key"
    )
    transport = TestClient(service.app, headers={"X-API-Key": key} if key else {})
    return client.set_httpx_client(transport)


def test_every_route_through_the_generated_client(
    keyed: tuple[ModuleType, TestClient],
) -> None:
    package, service = keyed
    models = module(package, "models")
    client = typed_client(package, service, KEY)
    visitor = module(package, "api.recommendations.recommendations_for_visitor")
    answer = visitor.sync_detailed(1001, client=client, k=5)
    assert answer.status_code == 200 and isinstance(answer.parsed, models.RecommendationList)
    assert len(answer.parsed.items) == 5 and answer.parsed.items[0].rank == 1
    assert answer.headers["etag"]

    ranked = module(package, "api.recommendations.recommendations_for_session").sync_detailed(
        client=client,
        body=models.RecommendationRequest(visitor_id=1001, session_item_ids=[1, 2], k=3),
    )
    assert isinstance(ranked.parsed, models.RecommendationList) and len(ranked.parsed.items) == 3

    similar = module(package, "api.items.similar_items").sync_detailed(1, client=client, k=4)
    assert isinstance(similar.parsed, models.SimilarItems) and len(similar.parsed.items) == 4

    event = models.Event(
        timestamp=int(time.time() * 1000) - 60_000,
        visitorid=1001,
        event=models.EventEvent.VIEW,
        itemid=1,
    )
    posted = module(package, "api.events.post_events").sync_detailed(
        client=client, body=[event], idempotency_key="typed-client-1"
    )
    assert posted.status_code == 202 and isinstance(posted.parsed, models.EventsAccepted)
    assert posted.parsed.accepted == 1

    health = module(package, "api.health.healthz").sync(client=client)
    ready = module(package, "api.health.readyz").sync(client=client)
    assert isinstance(health, models.Health) and isinstance(ready, models.Readiness)


def test_errors_come_as_the_declared_model(keyed: tuple[ModuleType, TestClient]) -> None:
    package, service = keyed
    models = module(package, "models")
    visitor = module(package, "api.recommendations.recommendations_for_visitor")
    # 401: no key, or a wrong one
    for key in (None, "w" * 24):
        refused = visitor.sync_detailed(1001, client=typed_client(package, service, key))
        assert refused.status_code == 401 and isinstance(refused.parsed, models.ApiError)
        assert "X-API-Key" in refused.parsed.detail
    # 422: the fields, as ValidationErrorItem
    client = typed_client(package, service, KEY)
    invalid = visitor.sync_detailed(1001, client=client, k=1000)
    assert invalid.status_code == 422 and isinstance(invalid.parsed, models.ApiError)
    (error,) = invalid.parsed.detail
    assert isinstance(error, models.ValidationErrorItem) and error.loc[-1] == "k"


def test_a_client_of_a_service_without_keys_meets_a_503(tmp_path: Path) -> None:
    """Generated from a development service (no keys, no snapshot yet): the key scheme is still
    in the spec, and the 503 comes as the error model with Retry-After."""
    settings = make_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as service:
        spec = service.get("/openapi.json").json()
        assert "APIKeyHeader" in spec["components"]["securitySchemes"]
        package = generate(spec, tmp_path / "open_client")
        models = module(package, "models")
        client = package.Client(base_url=str(service.base_url)).set_httpx_client(service)
        visitor = module(package, "api.recommendations.recommendations_for_visitor")
        unavailable = visitor.sync_detailed(1001, client=client)
        assert unavailable.status_code == 503 and isinstance(unavailable.parsed, models.ApiError)
        assert int(unavailable.headers["retry-after"]) >= 1
        ready = module(package, "api.health.readyz").sync_detailed(client=client)
        assert ready.status_code == 503 and isinstance(ready.parsed, models.Readiness)
