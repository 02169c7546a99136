"""Schema-driven fuzzing of the API with schemathesis: no input yields a 500.

Every operation of the OpenAPI schema gets generated requests that fit the schema and requests
that do not (a bounded number of each, so the whole run takes seconds), sent to the app
in-process over a published snapshot. Each answer must not be a server error, must use a status
code and content type the schema declares, and must match the declared response schema (the
hand-rendered JSON of the hot routes included).

(Driven through `operation.as_strategy()` with hypothesis rather than schemathesis' pytest
plugin, whose lazy fixture loader does not run on pytest 9.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from recsys.lake import Lake
from tests.api_snapshots import publish_world
from tests.unit.api.conftest import make_settings

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 120  # per operation and mode
# the operations and generation modes, from the schema itself (building the app reads
# nothing); an operation without parameters or body has no invalid input to generate
OPERATIONS = [
    (method.upper(), path, mode)
    for path, methods in create_app(make_settings(Path(tempfile.gettempdir()) / "unused"))
    .openapi()["paths"]
    .items()
    for method, spec in methods.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or spec.get("parameters") or spec.get("requestBody")
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    config = make_settings(tmp_path_factory.mktemp("fuzz"))
    publish_world(Lake.from_settings(config))
    # schemathesis starts the app's lifespan (the snapshot loads) and keeps it for the session
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(config))


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_no_input_yields_a_server_error(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same examples on every run: a failure is reproducible
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call()
        case.validate_response(response, checks=CHECKS)

    check()
