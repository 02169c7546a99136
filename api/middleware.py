"""The service's one ASGI middleware, `ServiceMiddleware` (plain ASGI: Starlette's
`BaseHTTPMiddleware` costs tens of microseconds a request). It does what every request needs,
in this order:

1. the API key, for `/v1` routes when `RECSYS_API_KEYS` is set: checked before the body is
   read, so a caller without a key learns nothing (401, never a 422). The key's caller id
   (derived from it, never the key) goes into the request state: idempotency keys are scoped
   to it, and its rate limit (`RECSYS_API_RATE_LIMIT` per second, bursts of
   `RECSYS_API_RATE_BURST`) answers 429 with `Retry-After` when spent. Without keys, `/v1`
   answers only requests that arrived on a loopback address (403 otherwise), unless
   `RECSYS_API_ALLOW_NO_AUTH` says something in front of the service checks callers: the
   rule holds however the app is started (`create_app` installs it), not only under
   `recsys serve`;
2. the body limit: a declared `Content-Length` over `RECSYS_API_MAX_BODY_BYTES` is refused
   at once (413), and a streamed body is counted as it is read;
3. the request duration histogram, by route template (not the raw path: ids would explode
   the label set) and status, and the version headers on every answer;
4. gzip: a JSON answer of at least `RECSYS_API_GZIP_MIN_BYTES` is compressed for a client that
   sends `Accept-Encoding: gzip` (a k=100 list: ~10.5 kB -> ~2.3 kB). Done here, on the answer's
   one body message, rather than by another middleware wrapping every request.

CORS (`RECSYS_API_CORS_ORIGINS`) is Starlette's `CORSMiddleware`, outside this one, so that a
preflight (which never carries `X-API-Key`) is answered before the key check.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, HTTPException
from starlette.routing import Match

from api.deps import DIGITS
from api.metrics import Metrics
from api.ratelimit import RateLimiter, retry_after
from api.store import SnapshotStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

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
        gzip_min_bytes: int = 0,
    ) -> None:
        self.app = app
        self.gzip_min_bytes = gzip_min_bytes
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
        if method == "HEAD":
            # a GET without its body (RFC 9110): the routes declare GET only, as OpenAPI shows
            scope = {**scope, "method": "GET"}
            send = _without_body(send)
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
            declared = header(scope, b"content-length")
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

        gzip = self.gzip_min_bytes > 0 and _accepts_gzip(scope)
        held: Message | None = None  # the start of a JSON answer that may yet be compressed

        async def send_with_headers(message: Message) -> None:
            nonlocal status, held
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                # a route that answered from a snapshot has named it; others get the current one
                if not any(k == b"x-snapshot-version" for k, _ in headers):
                    headers += self._versions()
                message = {**message, "headers": headers}
                if gzip and (b"content-type", b"application/json") in headers:
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                start, held = held, None
                body = message.get("body", b"")
                if not message.get("more_body", False) and len(body) >= self.gzip_min_bytes:
                    body = _gzip(body)
                    start["headers"] = [
                        *(h for h in start["headers"] if h[0] != b"content-length"),
                        (b"content-length", str(len(body)).encode()),
                        (b"content-encoding", b"gzip"),
                        (b"vary", b"Accept-Encoding"),
                    ]
                    message = {**message, "body": body}
                await send(start)
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
        given = header(scope, API_KEY_HEADER.lower().encode())
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


def _without_body(send: Send) -> Send:
    """`send` with every body message emptied (the headers, Content-Length included, stay)."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return send_head


def _accepts_gzip(scope: Scope) -> bool:
    """Whether the request's Accept-Encoding names gzip (and does not refuse it: gzip;q=0)."""
    accepted = header(scope, b"accept-encoding")
    if accepted is None or "gzip" not in accepted:
        return False
    for coding in accepted.split(","):
        name, _, params = coding.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip"):
            weight = params.strip().lower().removeprefix("q=") if params else "1"
            try:
                return float(weight) > 0
            except ValueError:  # a malformed weight: do as if gzip were not named
                return False
    return False


def _gzip(body: bytes) -> bytes:
    """`body` as a gzip member, at level 5. A k=100 answer (10.5 kB, random ids): 2.3 kB in
    0.14 ms; level 9 saves another 2% in 1.6x the time, level 1 is 22% larger."""
    compressor = zlib.compressobj(5, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


def header(scope: Scope, name: bytes) -> str | None:
    """The value of the request header `name` (lower-case bytes), or None: read straight from the
    ASGI scope, without building Starlette's Headers."""
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
