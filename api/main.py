"""The app: `create_app()` builds it (uvicorn runs it as a factory, see `recsys serve`).

Nothing heavy happens at import or in `create_app`: the lifespan handler makes the lake and the
snapshot store, loads `LATEST` (in a worker thread, so that a slow download does not stall the
loop), and starts the task that polls for newer snapshots.

One ASGI middleware (`ServiceMiddleware`, plain ASGI: Starlette's `BaseHTTPMiddleware` costs
tens of microseconds a request) does what every request needs, in this order:

1. the API key, for `/v1` routes when `RECSYS_API_KEYS` is set: checked before the body is
   read, so a caller without a key learns nothing (401, never a 422). The key's caller id
   (derived from it, never the key) goes into the request state: idempotency keys are scoped
   to it, and its rate limit (`RECSYS_API_RATE_LIMIT` per second, bursts of
   `RECSYS_API_RATE_BURST`) answers 429 with `Retry-After` when spent. Without keys, `/v1`
   answers only requests that arrived on a loopback address (403 otherwise), unless
   `RECSYS_API_ALLOW_NO_AUTH` says something in front of the service checks callers: the
   rule holds however the app is started, not only under `recsys serve`;
2. the body limit: a declared `Content-Length` over `RECSYS_API_MAX_BODY_BYTES` is refused
   at once (413), and a streamed body is counted as it is read;
3. the request duration histogram, by route template (not the raw path: ids would explode
   the label set) and status, and the version headers on every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import hmac
import importlib.resources
import ipaddress
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.deps import DIGITS
from api.events import RecentBatches
from api.memory import tune_allocator
from api.metrics import Metrics
from api.ratelimit import RateLimiter, retry_after
from api.routes import events, health, items, recommendations
from api.store import SnapshotStore
from recsys.lake import Lake
from recsys.settings import Settings, get_settings

log = logging.getLogger("api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
# Requests are answered on the event loop (GET) or a worker thread (POST) while a snapshot
# loads in another thread; with the default, every hand-over between them can cost the
# request up to 5 ms, and a request needs several. 1 ms bounds that wait for a few
# microseconds of extra switching.
GIL_SWITCH_INTERVAL = 0.001

API_KEY_HEADER = "X-API-Key"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=f"the request body is larger than {limit:,} bytes")


class ServiceMiddleware:
    """Key check, body limit, metrics and version headers (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: FastAPI,
        metrics: Metrics,
        api_keys: tuple[str, ...],
        max_body_bytes: int,
        rate_limiter: RateLimiter | None = None,
        allow_no_auth: bool = False,
    ) -> None:
        self.app = app
        self.service = service
        self.metrics = metrics
        # digests: compare_digest on equal-length inputs does not leak a key's length
        self.key_digests = tuple(hashlib.sha256(k.encode()).digest() for k in api_keys)
        # who a key is, for idempotency scopes and rate limits: derived from it, never it
        self.callers = tuple(
            "key-" + hashlib.sha256(b"recsys-caller\0" + d).hexdigest()[:16]
            for d in self.key_digests
        )
        self.max_body_bytes = max_body_bytes
        self.rate_limiter = rate_limiter if api_keys else None  # per key: none without keys
        self.allow_no_auth = allow_no_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        status = 500  # what the client gets if the app fails before answering
        path = _route_path(scope)
        early: tuple[int, str, list[tuple[bytes, bytes]]] | None = None
        # everything but the open pages is guarded (an allowlist: a route added later, or a
        # path seen through a root path, is never open by mistake)
        guarded = not (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES))
        if guarded and self.key_digests:
            caller = self._caller(scope)
            if caller is None:
                early = (
                    401,
                    f"a valid {API_KEY_HEADER} header is required",
                    [(b"www-authenticate", b"ApiKey")],
                )
            else:
                scope.setdefault("state", {})["caller"] = caller
                limiter = self.rate_limiter
                wait = limiter.acquire(caller) if limiter is not None else None
                if wait is not None:
                    retry = retry_after(wait)
                    early = (
                        429,
                        f"too many requests for this API key; retry in {retry} s",
                        [(b"retry-after", retry.encode())],
                    )
        elif guarded and not self.allow_no_auth and not _is_local(scope):
            early = (403, NO_AUTH_REFUSAL, [])
        if early is None and method in BODY_METHODS:
            declared = _header(scope, b"content-length")
            if declared is not None and (
                not DIGITS.fullmatch(declared) or int(declared) > self.max_body_bytes
            ):
                early = (413, BodyTooLarge(self.max_body_bytes).detail, [])
            else:
                receive = self._limited(receive)
        if early is not None:
            status, detail, headers = early
            await _send_json(send, status, {"detail": detail}, headers + self._versions())
            self.metrics.observe_request(
                method, self._template(scope), status, time.perf_counter() - started
            )
            return

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                # a route that answered from a snapshot has named it; others get the current one
                if not any(k == b"x-snapshot-version" for k, _ in headers):
                    headers += self._versions()
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(method, template, status, time.perf_counter() - started)

    def _versions(self) -> list[tuple[bytes, bytes]]:
        store: SnapshotStore | None = getattr(self.service.state, "store", None)
        snapshot = store.current if store is not None else None
        if snapshot is None:
            return []
        return [
            (b"x-snapshot-version", snapshot.version.encode()),
            (b"x-model-version", snapshot.model_version.encode()),
        ]

    def _caller(self, scope: Scope) -> str | None:
        """The caller id of the request's API key; None when it has no valid one."""
        given = _header(scope, API_KEY_HEADER.lower().encode())
        if given is None:
            return None
        digest = hashlib.sha256(given.encode("latin-1")).digest()
        matched = -1
        for i, key in enumerate(self.key_digests):  # no early exit: the time does not say
            if hmac.compare_digest(digest, key):  # which key matched
                matched = i
        return self.callers[matched] if matched >= 0 else None

    def _limited(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)  # FastAPI turns it into the 413 answer
            return message

        return limited

    def _template(self, scope: Scope) -> str:
        """The route template of a request answered before routing (401, 413)."""
        for route in self.service.router.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return str(getattr(route, "path", "unmatched"))
        return "unmatched"


NO_AUTH_REFUSAL = (
    "this service has no API keys, so it answers /v1 on loopback addresses only: set "
    "RECSYS_API_KEYS, or RECSYS_API_ALLOW_NO_AUTH=true if something in front of it checks callers"
)


# open without a key, from anywhere: probes, Prometheus, the API's own documentation
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"})
OPEN_PREFIXES = ("/docs/assets/",)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the root path that a server or a mount puts in
    front of it (`uvicorn --root-path /api` makes `/api/v1/...`)."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, ::ffff:127.x, localhost)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # a dual-stack socket's IPv4 clients
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _is_local(scope: Scope) -> bool:
    """Whether the request came in on a loopback address (or not over IP at all: a Unix
    socket, an in-process test client)."""
    server = scope.get("server")
    return _is_local_host(str(server[0]) if server else "")


@functools.lru_cache(maxsize=256)
def _is_local_host(host: str) -> bool:
    """`_is_local` for the address a request came in on: a server listens on a few, so each
    is parsed once, not on every request."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True  # not an IP address: no network interface involved
    return is_loopback(host)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


MAX_ERRORS = 20  # a body of 1,000 bad events is answered with the first 20 of its errors


def safe_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with every character that is not printable (control
    characters, lone surrogates that UTF-8 cannot encode) escaped: safe to put in a JSON
    answer or a log line."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut + ("..." if len(text) > limit else "")


def safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors as `{type, loc, msg}`: no `input`, no `ctx`, bounded, encodable."""
    safe = []
    for error in errors[:MAX_ERRORS]:
        loc = [p if isinstance(p, int) else safe_text(str(p), 64) for p in error.get("loc", ())]
        msg = str(error.get("msg", ""))
        if error.get("type") == "json_invalid" and isinstance(error.get("ctx"), dict):
            msg = f"{msg}: {error['ctx'].get('error', '')}"  # says what, not the input
        safe.append(
            {
                "type": safe_text(str(error.get("type", "")), 64),
                "loc": loc,
                "msg": safe_text(msg, 200),
            }
        )
    return safe


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
            gc.unfreeze()

    app = FastAPI(
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
    # with keys, the scheme is documented in OpenAPI; the check itself is ServiceMiddleware's
    v1_dependencies = (
        [Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))] if settings.api_keys else []
    )
    unauthorized: dict[int | str, dict[str, Any]] = (
        {401: {"description": f"missing or wrong {API_KEY_HEADER}"}} if settings.api_keys else {}
    )
    for router in (recommendations.router, items.router, events.router):
        app.include_router(router, dependencies=v1_dependencies, responses=unauthorized)
    app.include_router(health.router)

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
    )
    return app
