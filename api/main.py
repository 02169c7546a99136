"""The app: `create_app()` builds it (uvicorn runs it as a factory, see `recsys serve`).

Nothing heavy happens at import or in `create_app`: the lifespan handler makes the lake and the
snapshot store, loads `LATEST` (in a worker thread, so that a slow download does not stall the
loop), and starts the task that polls for newer snapshots. What every request goes through
(API keys, the loopback rule without them, the body limit, metrics, version headers) is
`api.middleware.ServiceMiddleware`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.resources
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import Scope

from api.events import RecentBatches
from api.impressions import ImpressionLog
from api.memory import tune_allocator
from api.metrics import Metrics
from api.middleware import API_KEY_HEADER, ServiceMiddleware
from api.ratelimit import RateLimiter
from api.routes import events, health, items, recommendations
from api.schemas import MAX_ID, MAX_K, ApiError
from api.store import SnapshotStore
from recsys.experiments import ExperimentsFile
from recsys.ingest import MAX_TIMESTAMP_MS
from recsys.lake import Lake
from recsys.safe import safe_errors, safe_text
from recsys.settings import Settings, get_settings

log = logging.getLogger("api")

# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
# Requests are answered on the event loop (GET) or a worker thread (POST) while a snapshot
# loads in another thread; with the default, every hand-over between them can cost the
# request up to 5 ms, and a request needs several. 1 ms bounds that wait for a few
# microseconds of extra switching.
GIL_SWITCH_INTERVAL = 0.001


def _unparsable(exc: Exception) -> str:
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not UTF-8 JSON"
    if isinstance(cause, RecursionError):
        return "the body is JSON nested too deep"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the body holds an integer with too many digits"
    return "the body is not valid JSON"


DOCS_ASSETS = "/docs/assets"


def _add_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` with their scripts, styles and icon served from this
    process (the assets of the `fastapi-offline` package): the pages load nothing from another
    host, so they work offline and leak no visit to a CDN."""
    static = Path(str(importlib.resources.files("fastapi_offline") / "static"))
    app.mount(DOCS_ASSETS, StaticFiles(directory=static), name="docs-assets")
    title = f"{app.title} - API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Response:
        return get_swagger_ui_html(
            openapi_url=str(app.openapi_url),
            title=title,
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            # Swagger UI would send the schema to validator.swagger.io for its badge
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return get_redoc_html(
            openapi_url=str(app.openapi_url),
            title=title,
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _error(description: str) -> dict[str, Any]:
    return {"model": ApiError, "description": description}


V1_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error(f"missing or wrong {API_KEY_HEADER} (when the service has API keys)"),
    403: _error("no API keys are set and the request did not come in on a loopback address"),
    422: _error("a parameter or the body is invalid: `detail` lists the fields"),
    429: _error("this API key's rate limit is spent: see Retry-After"),
    500: _error("an unexpected error, logged by the service"),
}
API_KEY_SCHEME = "APIKeyHeader"
# FastAPI's OpenAPI model types numeric bounds as floats, so 10**18 - 1 came out as 1e+18 (and
# rounded up); the integers they were, by the float each became
_INTEGER_BOUNDS = {float(b): b for b in (MAX_ID, MAX_K, MAX_TIMESTAMP_MS)}


def _openapi(app: FastAPI, keys_required: bool) -> Any:
    """`app.openapi` with what FastAPI's generator leaves out or bends: the API key scheme on
    every /v1 operation (required when the service has keys, optional otherwise), and integer
    bounds written as integers."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})[
                API_KEY_SCHEME
            ] = {
                "type": "apiKey",
                "in": "header",
                "name": API_KEY_HEADER,
                "description": "required when the service has RECSYS_API_KEYS",
            }
            security: list[dict[str, list[str]]] = [{API_KEY_SCHEME: []}]
            if not keys_required:
                security.append({})  # or none at all, on a local service without keys
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = security
            _integers(schema)
        assert app.openapi_schema is not None  # FastAPI's generate() keeps what it made
        return app.openapi_schema

    return openapi


class PlainRoute(Route):
    """A route served by Starlette alone, without FastAPI's request handling.

    For the two hottest routes, which declare no parameters and no dependencies (they validate
    their own, see `api.deps`): FastAPI's handler still solves an empty dependency set and
    wraps the call, about a fifth of a cached answer's time. The route is registered twice:
    FastAPI's declaration (the same function) makes the OpenAPI schema, and this one, put in
    front of it, answers. Its scope names it like FastAPI's routes do, so that the metrics
    label the request with the route template.
    """

    def __init__(self, path: str, endpoint: Any) -> None:
        super().__init__(path, endpoint, methods=["GET"], include_in_schema=False)
        # HEAD never reaches a route: ServiceMiddleware answers it as a GET without a body
        self.methods = {"GET"}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL:
            child["route"] = self
        return match, child


# (path, endpoint) of the routes served by PlainRoute
PLAIN_ROUTES = (
    ("/v1/recommendations/{visitor_id}", recommendations.recommendations_for_visitor),
    ("/v1/items/{item_id}/similar", items.similar_items),
)


def _serve_plainly(app: FastAPI) -> None:
    declared = {
        (getattr(route, "path", None), getattr(route, "endpoint", None))
        for route in app.router.routes
    }
    for path, endpoint in PLAIN_ROUTES:
        if (path, endpoint) not in declared:  # the schema must show what is served
            raise RuntimeError(f"{path} is not declared to FastAPI with {endpoint.__name__}")
        app.router.routes.insert(0, PlainRoute(path, endpoint))


def _integers(node: Any) -> None:
    """Integer schemas' float bounds back to the integers they were (in place)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = _INTEGER_BOUNDS.get(value, int(value))
        for child in node.values():
            _integers(child)
    elif isinstance(node, list):
        for child in node:
            _integers(child)


async def _poll(store: SnapshotStore, interval: float) -> None:
    """Look for a newer LATEST every `interval` seconds, for as long as the app runs."""
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(store.refresh)
        except Exception:  # never let the poller die: the next poll tries again
            log.exception("snapshot poll failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service over the lake's latest snapshot (settings: the environment by default)."""
    settings = settings or get_settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_allocator()
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL))
        lake = Lake.from_settings(settings)
        store = SnapshotStore(
            lake,
            settings.api_cache_dir,
            metrics,
            cache_bytes=settings.recsys_api_cache_mb * 1_000_000,
        )
        app.state.lake = lake
        app.state.store = store
        impressions.start(lake)
        await anyio.to_thread.run_sync(store.refresh)
        if store.current is None:
            log.warning("starting without a snapshot: %s", store.last_error)
        # What start-up made (modules, FastAPI's and pydantic's models, CatBoost, DuckDB: about
        # 100,000 objects) lives as long as the process; a full collection walking it all holds
        # the GIL for 100 ms or more, stalling every request meanwhile. Frozen, collections only
        # walk what requests and swaps make. (Frozen objects are still freed when nothing
        # refers to them, as a swapped-out snapshot: only cycles among them would stay.)
        gc.collect()
        gc.freeze()
        poller = asyncio.create_task(_poll(store, settings.recsys_api_poll_seconds))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            # what is buffered goes to the lake before the process ends
            await anyio.to_thread.run_sync(impressions.stop)
            gc.unfreeze()

    app = FastAPI(
        # operation ids are the route functions' names (`recommendations_for_visitor`), which a
        # generated client turns into its method and module names
        generate_unique_id_function=lambda route: route.name,
        title="recsys",
        version="0.1.0",
        summary="Recommendations for an online shop, served from published snapshots.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a public CDN: ours, below
        redoc_url=None,
    )
    _add_docs(app)
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.recent_batches = RecentBatches()
    impressions = ImpressionLog(
        metrics,
        capacity=settings.recsys_impressions_buffer,
        flush_seconds=settings.recsys_impressions_flush_seconds,
        enabled=settings.recsys_impressions_log,
    )
    app.state.impressions = impressions
    app.state.experiments = (
        ExperimentsFile(
            settings.recsys_experiments_file,
            on_failure=lambda _reason: metrics.experiment_reload_failures.inc(),
        )
        if settings.recsys_experiments_file is not None
        else None
    )
    # every /v1 route may answer these, whatever the settings (a client generated from a
    # development server must know them too); the checks are ServiceMiddleware's
    for router in (recommendations.router, items.router, events.router):
        app.include_router(router, responses=V1_ERRORS)
    app.include_router(health.router)
    _serve_plainly(app)
    app.openapi = _openapi(app, keys_required=bool(settings.api_keys))  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        """422 naming the fields, without echoing the input: what a client sent may not even
        be encodable (NaN, lone surrogates), and a refused value may be large or a secret."""
        errors = safe_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "type": ""}
        log.info(  # one bounded line per refused request, never the input itself
            "422 on %s %s: %d error(s), first %s at %s",
            safe_text(request.method, 16),
            safe_text(request.url.path, 80),
            len(exc.errors()),
            first["type"],
            ".".join(str(part) for part in first["loc"]),
        )
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """As FastAPI answers, except that a body FastAPI cannot parse (its 400: not UTF-8, an
        integer of thousands of digits, JSON nested too deep) is a 422 like any other
        malformed body, so that clients see one kind of answer for it."""
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            return JSONResponse(
                {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": _unparsable(exc)}]},
                status_code=422,
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """The last resort: a bug, logged with its traceback; the client gets a plain 500."""
        log.error(
            "unexpected error on %s %s",
            safe_text(request.method, 16),
            safe_text(request.url.path, 200),
            exc_info=exc,
        )
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_middleware(
        ServiceMiddleware,
        service=app,
        metrics=metrics,
        api_keys=settings.api_keys,
        max_body_bytes=settings.recsys_api_max_body_bytes,
        rate_limiter=(
            RateLimiter(settings.recsys_api_rate_limit, settings.recsys_api_rate_burst)
            if settings.recsys_api_rate_limit > 0
            else None
        ),
        allow_no_auth=settings.recsys_api_allow_no_auth,
        gzip_min_bytes=settings.recsys_api_gzip_min_bytes,
    )
    if settings.cors_origins:
        # outside ServiceMiddleware: a preflight never carries the key, and is answered here
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=[API_KEY_HEADER, "Content-Type", "Idempotency-Key", "If-None-Match"],
            expose_headers=[*EXPOSED_HEADERS],
            max_age=600,
        )
    return app


# what a page's script may read of an answer (browsers hide other headers from it)
EXPOSED_HEADERS = (
    "X-Snapshot-Version",
    "X-Model-Version",
    "X-Impression-Id",
    "ETag",
    "Retry-After",
)
