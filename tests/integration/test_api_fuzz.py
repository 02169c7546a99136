"""Schema-driven fuzzing of the API with schemathesis: no input yields a 500.

Every operation of the OpenAPI schema gets generated requests that fit the schema and requests
that do not (a bounded number of each, so the whole run takes seconds), sent to the app
in-process over a published snapshot. Each answer must not be a server error, must use a status
code and content type the schema declares, and must match the declared response schema (the
hand-rendered JSON of the hot routes included).

A third mode, `odd`, takes the schema-valid bodies and puts in values that Python's JSON
parser accepts but no schema allows: NaN, Infinity and -Infinity in place of any value, and
lone surrogate code points in place of a string or as a key (sent as raw JSON text, `\ud800`
escapes: a client library would refuse to encode them, an attacker does not use one).

(Driven through `operation.as_strategy()` with hypothesis rather than schemathesis' pytest
plugin, whose lazy fixture loader does not run on pytest 9.)
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
ODD = "odd"  # schema-valid bodies with odd values put in (see the module doc)
ODD_VALUES: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    "\ud800",
    "view\udfff",
    {"\udc00": 1},
    [float("nan"), "\ud83d"],
]
OPERATIONS = [
    (method.upper(), path, mode)
    for path, methods in create_app(make_settings(Path(tempfile.gettempdir()) / "unused"))
    .openapi()["paths"]
    .items()
    for method, spec in methods.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE, ODD)
    if mode is GenerationMode.POSITIVE
    or (mode is GenerationMode.NEGATIVE and (spec.get("parameters") or spec.get("requestBody")))
    or (mode == ODD and spec.get("requestBody"))
]


def put_odd(body: Any, where: int, odd: Any) -> Any:
    """`body` with its `where`-th place (depth first, wrapping around) replaced by `odd`; a
    dict also gets a key that is a lone surrogate when `where` is odd."""
    places: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                places.append((node, key))
                walk(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                places.append((node, index))
                walk(value)

    walk(body)
    if not places:
        return odd
    container, slot = places[where % len(places)]
    container[slot] = odd
    if isinstance(container, dict) and where % 2:
        container["\udbff" + str(slot)] = 1
    return body


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    config = make_settings(tmp_path_factory.mktemp("fuzz"))
    publish_world(Lake.from_settings(config))
    # schemathesis starts the app's lifespan (the snapshot loads) and keeps it for the session
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(config))


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_no_input_yields_a_server_error(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode | str
) -> None:
    operation = api_schema[path][method]
    if mode == ODD:
        odd_strategy = st.builds(
            lambda case, where, odd: _with_odd_body(case, where, odd),
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            st.integers(0, 1_000),
            st.sampled_from(ODD_VALUES),
        )
        strategy = odd_strategy
    else:
        assert isinstance(mode, GenerationMode)
        strategy = operation.as_strategy(generation_mode=mode)

    @given(case=strategy)
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


def _with_odd_body(case: schemathesis.Case, where: int, odd: Any) -> schemathesis.Case:
    body = put_odd(copy.deepcopy(case.body), where, copy.deepcopy(odd))
    # raw JSON text: NaN and Infinity as Python writes them, surrogates as \u escapes
    case.body = json.dumps(body).encode()
    return case
