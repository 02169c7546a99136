"""Shared dependencies, as `Annotated` aliases, and the plain functions behind them.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in the threadpool, and a
thread hop per request would cost more than the lookups it guards.

The two hottest routes (a visitor's list, similar items) use none, and declare no parameters
either: FastAPI 0.136 spends about 15 microseconds per declared parameter and more per
dependency on every request, which together cost more than the answer itself (from the cache,
tens of microseconds). They validate path and query in one step with a pydantic model
(`Params.parse`, pydantic-core: a few microseconds), raise the same 422 FastAPI would (`loc`
names the parameter), and put the model's parameters into OpenAPI (`Params.openapi`), so that
the documented contract and the checked one are the same object.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import parse_qsl

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from api.metrics import Metrics
from api.schemas import MAX_EXCLUDE, MAX_ID, MAX_K
from api.snapshot import Snapshot
from api.store import SnapshotStore

NO_SNAPSHOT = (
    "no snapshot is loaded yet, so there is nothing to recommend from; the service starts "
    "answering once one is published (`recsys publish`) and picked up"
)


DIGITS = re.compile(r"[0-9]{1,18}")  # an id or a count, as the path or the query writes it


async def get_store(request: Request) -> SnapshotStore | None:
    return getattr(request.app.state, "store", None)


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def snapshot_of(request: Request) -> Snapshot:
    """The served snapshot, read once: the request keeps it even if a swap happens meanwhile.
    503 when there is none."""
    store: SnapshotStore | None = getattr(request.app.state, "store", None)
    snapshot = store.current if store is not None else None
    if snapshot is None:
        reason = store.public_error if store is not None else None
        # the service looks for a snapshot every poll interval: asking sooner is pointless
        poll = request.app.state.settings.recsys_api_poll_seconds
        raise HTTPException(
            503,
            detail=NO_SNAPSHOT + (f" ({reason})" if reason else ""),
            headers={"Retry-After": str(max(1, math.ceil(poll)))},
        )
    return snapshot


ANONYMOUS = "anonymous"  # the caller when the service runs without API keys


def caller_of(request: Request) -> str:
    """Who is calling: an id derived from the API key that `ServiceMiddleware` accepted (never
    the key itself), or `anonymous` without keys."""
    return str(request.scope.get("state", {}).get("caller", ANONYMOUS))


def exclude_ids(text: str | None) -> tuple[int, ...]:
    """Comma-separated item ids as sorted unique ints; ValueError says what is wrong."""
    if not text:
        return ()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = next((i for i, p in enumerate(parts) if not DIGITS.fullmatch(p)), None)
    if bad is not None:  # says where, never echoes what
        raise ValueError(
            f"id {bad + 1} of the list is not an item id (a non-negative integer of at most "
            "18 digits 0-9)"
        )
    if len(parts) > MAX_EXCLUDE:
        raise ValueError(f"at most {MAX_EXCLUDE} ids, got {len(parts)}")
    return tuple(sorted({int(p) for p in parts}))


AppMetrics = Annotated[Metrics, Depends(get_metrics)]
Store = Annotated[SnapshotStore | None, Depends(get_store)]


class Params(BaseModel):
    """Path and query parameters of a route that declares none to FastAPI (see the module doc).

    Subclasses list their fields; `path_fields` names those that come from the path.
    """

    model_config = ConfigDict(extra="ignore")
    path_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, request: Request) -> Self:
        # the query string as Starlette's QueryParams reads it (latin-1, blanks kept, the last
        # of a repeated name), without building the multi-dict a route never asks for
        query: bytes = request.scope.get("query_string", b"")
        values: dict[str, Any] = (
            dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else {}
        )
        values.update(request.path_params)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            errors = []
            for error in exc.errors(include_url=False):
                name = error["loc"][0] if error["loc"] else ""
                where = "path" if name in cls.path_fields else "query"
                errors.append({**error, "loc": (where, *error["loc"])})
            raise RequestValidationError(errors) from None

    @classmethod
    def openapi(cls) -> list[dict[str, Any]]:
        """The OpenAPI `parameters` of the fields, as FastAPI would have written them."""
        schema = cls.model_json_schema()
        required = set(schema.get("required", ()))
        parameters = []
        for name, prop in schema["properties"].items():
            prop = dict(prop)
            description = prop.pop("description", None)
            parameter: dict[str, Any] = {
                "name": name,
                "in": "path" if name in cls.path_fields else "query",
                "required": name in required or name in cls.path_fields,
                "schema": prop,
            }
            if description:
                parameter["description"] = description
            parameters.append(parameter)
        return parameters


def _digits_only(value: Any) -> Any:
    """A path or query value is an integer only as plain ASCII digits: Python's `int()` would
    also read `1_000`, `+5`, ` 5` and other scripts' digits."""
    if isinstance(value, str) and not DIGITS.fullmatch(value):
        raise ValueError("must be a non-negative integer in digits 0-9 (at most 18)")
    return value


def _category_digits(value: Any) -> Any:
    """`_digits_only`, and -1: the unknown category, as the answers write it."""
    return value if value == "-1" else _digits_only(value)


# integers from the path or the query string (bodies are strict JSON numbers already); the
# check comes after the Field, so that OpenAPI still states the bounds
DigitsOnly = BeforeValidator(_digits_only)
K = Annotated[int, Field(ge=1, le=MAX_K, description="how many items"), DigitsOnly]


class VisitorParams(Params):
    path_fields = ("visitor_id",)

    visitor_id: Annotated[int, Field(ge=0, le=MAX_ID), DigitsOnly]
    k: K = 10
    category_id: Annotated[
        int | None,
        Field(
            ge=-1,
            le=MAX_ID,
            description="only items of this (leaf) category; -1: items of no known category, "
            "as answers write it",
        ),
        BeforeValidator(_category_digits),
    ] = None
    exclude: Annotated[
        str | None,
        Field(
            max_length=20 * MAX_EXCLUDE,
            description=f"comma-separated item ids to leave out (at most {MAX_EXCLUDE})",
            examples=["1001,1002"],
        ),
    ] = None

    @field_validator("exclude")
    @classmethod
    def _item_ids(cls, value: str | None) -> str | None:
        exclude_ids(value)
        return value

    @property
    def excluded(self) -> tuple[int, ...]:
        return exclude_ids(self.exclude)


class SimilarParams(Params):
    path_fields = ("item_id",)

    item_id: Annotated[int, Field(ge=0, le=MAX_ID), DigitsOnly]
    k: K = 10
