"""How `recsys serve` runs uvicorn: the limits a client cannot push past, whatever it sends.

`uvicorn_options(settings)` gives the keyword arguments for `uvicorn.run` (or `uvicorn.Config`):

- the request line and headers together are at most `RECSYS_API_MAX_HEADER_BYTES`: over it the
  client gets `431 Request Header Fields Too Large` and the connection is closed (uvicorn's
  default parser, httptools, has no limit at all);
- the request headers must be complete `RECSYS_API_HEADER_TIMEOUT_SECONDS` after the connection
  was made (first request) or after their first byte arrived (later requests on a kept-alive
  connection: the idle wait before that first byte is uvicorn's `timeout_keep_alive`); a client
  that has sent part of a request then gets `408 Request Timeout`, one that has sent nothing is
  just disconnected (browsers open connections ahead of need);
- the request body must be complete `RECSYS_API_BODY_TIMEOUT_SECONDS` after the headers: else
  `408` (if the app has not answered yet) and the connection is closed; the app's `receive()`
  then returns `http.disconnect`;
- `limit_concurrency=RECSYS_API_MAX_CONCURRENCY`: beyond that many open connections or running
  requests, uvicorn answers 503 (its own check, when a request's headers are complete);
- WebSocket upgrades are off (the service has no WebSocket route, and an upgraded connection
  would leave these limits behind).

The limits live in `LimitedHttpToolsProtocol`, a subclass of uvicorn's `HttpToolsProtocol` (the
fast parser, uvicorn's default when httptools is installed), given to uvicorn as
`http=functools.partial(LimitedHttpToolsProtocol, limits=Limits(...))`: uvicorn calls it like
the class for every connection, and a partial of a module-level class pickles, so each process
of `--workers N` (uvicorn pickles its Config into spawned processes) gets the same limits.
Without httptools, `LimitedH11Protocol` does the same over h11, except that an oversized head
is refused by h11 itself (`h11_max_incomplete_event_size`): uvicorn answers that with a 400.

A refusal (431, 408) is answered with a JSON `{"detail": ...}` and `Connection: close`; the
server then stops sending (FIN) and reads and discards what the client still sends for up to
`LINGER_SECONDS` (and `LINGER_BYTES`) before closing: closing a socket with unread data makes
the kernel reset the connection, and a client still sending a large header may then never read
the 431 (on Linux loopback it still does; over a network, it depends on the client's stack).

These classes rely on uvicorn's protocol internals (checked against uvicorn 0.54: the parser
callbacks `on_message_begin`, `on_headers_complete`, `on_message_complete`, the attributes
`app`, `cycle`, `flow`, `transport`, `server_state`, `url`, `headers`, `conn`);
tests/unit/api/test_server_limits.py exercises each limit on both protocols over real sockets.
"""

from __future__ import annotations

import asyncio
import functools
import http
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from recsys.settings import Settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HAVE_HTTPTOOLS = True
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is uvicorn's fallback
    HAVE_HTTPTOOLS = False

log = logging.getLogger("api.server")

KEEP_ALIVE_SECONDS = 5  # uvicorn's default: an idle kept-alive connection is closed after it
BACKLOG = 2048  # uvicorn's default: connections the kernel queues before they are accepted
LINGER_SECONDS = 2.0  # after a refusal, how long the client's remaining bytes are discarded
LINGER_BYTES = 4 * 1_048_576  # ... and how many at most

# what the connection's one timer is counting down
_HEAD = 1
_BODY = 2
_LINGER = 3


@dataclass(frozen=True)
class Limits:
    """What a connection may do (the defaults are the settings' defaults)."""

    max_header_bytes: int = 16_384
    header_timeout: float = 5.0
    body_timeout: float = 10.0


DEFAULT_LIMITS = Limits()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config`: the protocol with the limits of
    `settings`, and uvicorn's own bounds."""
    limits = Limits(
        max_header_bytes=settings.recsys_api_max_header_bytes,
        header_timeout=settings.recsys_api_header_timeout_seconds,
        body_timeout=settings.recsys_api_body_timeout_seconds,
    )
    return {
        "http": protocol_factory(limits),
        "ws": "none",
        "limit_concurrency": settings.recsys_api_max_concurrency,
        "backlog": BACKLOG,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        # used by uvicorn's h11 protocol only (httptools has no such option)
        "h11_max_incomplete_event_size": settings.recsys_api_max_header_bytes,
    }


def protocol_factory(limits: Limits, *, use_h11: bool = False) -> Any:
    """What uvicorn's `http=` takes: called like the protocol class, for every connection
    (httptools' protocol unless `use_h11` or httptools is missing)."""
    cls = LimitedH11Protocol if use_h11 or not HAVE_HTTPTOOLS else LimitedHttpToolsProtocol
    return functools.partial(cls, limits=limits)


def _response(
    status: int, detail: str, default_headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    status_line = b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())
    return status_line, headers, body


class _Refusal:
    """An ASGI app that answers every request with one status (for uvicorn to run in place of
    the service, as it runs its own `service_unavailable` beyond `limit_concurrency`)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        _, headers, body = _response(self.status, self.detail, [])
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Deadlines:
    """The timer and the refusals shared by both protocols (a mixin: the protocol class
    provides `transport`, `loop`, `flow`, `cycle`, `server_state`, `client`)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    flow: FlowControl
    server_state: ServerState
    client: tuple[str, int] | None
    limits: Limits

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """uvicorn's protocol constructor (the next class in the MRO), plus the limits."""
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]
        self.limits = limits
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = 0
        self._head_bytes = 0  # bytes of the current request's head received so far
        self._discarding = False  # refused: what the client still sends is dropped
        self._linger_left = 0

    # both protocols: the head's clock starts with the connection, and stops with it
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm(_HEAD, self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    # the cycle of uvicorn's protocol (each protocol has its own RequestResponseCycle class)
    def _current_cycle(self) -> Any:
        return getattr(self, "cycle", None)

    def _arm(self, kind: int, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_kind = kind
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_kind = 0

    def _discard(self, data: bytes) -> None:
        self._linger_left -= len(data)
        if self._linger_left < 0 and not self.transport.is_closing():
            self.transport.close()

    def _expired(self) -> None:
        kind, self._timer, self._timer_kind = self._timer_kind, None, 0
        if self.transport.is_closing():
            return
        if kind == _LINGER:
            self.transport.close()
            return
        cycle = self._current_cycle()
        if kind == _HEAD:
            if cycle is not None and not cycle.response_complete:
                # a pipelined request stalled behind one being answered: close after that one
                self._close_after_response(cycle)
            elif not self._head_started():
                self.transport.close()  # nothing sent at all: no answer to give
            else:
                seconds = self.limits.header_timeout
                self._refuse(408, f"the request headers were not complete within {seconds:g} s")
            return
        # _BODY
        if cycle is None or cycle.response_started:
            # answered already (the body nobody reads is still coming), or answering while the
            # body trickles in: the answer is cut short, the app's receive() gets http.disconnect
            self.transport.close()
        else:
            # the app's sends are dropped from now on, and its receive() gets http.disconnect
            cycle.disconnected = True
            cycle.message_event.set()
            seconds = self.limits.body_timeout
            self._refuse(408, f"the request body was not complete within {seconds:g} s")

    def _head_started(self) -> bool:
        """Whether any byte of the awaited request has arrived."""
        return self._head_bytes > 0

    def _close_after_response(self, cycle: Any) -> None:
        """Close once the answer in progress is sent; drop what the client sends meanwhile."""
        cycle.keep_alive = False
        self._discarding = True
        self._linger_left = LINGER_BYTES

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` and close: stop sending, drain what the client sends for a while."""
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("%s: %d, %s; closing the connection", peer, status, detail)
        status_line, headers, body = _response(status, detail, self.server_state.default_headers)
        self.transport.write(
            b"".join([status_line, *(b"%s: %s\r\n" % h for h in headers), b"\r\n", body])
        )
        self._discarding = True
        self._linger_left = LINGER_BYTES
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.flow.resume_reading()
            self._arm(_LINGER, LINGER_SECONDS)
        else:  # TLS: no half-close
            self.transport.close()


if HAVE_HTTPTOOLS:

    class LimitedHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
        """uvicorn's httptools protocol with the limits of `Limits` (see the module doc).

        The head's size is counted in `data_received`: while a request's head is incomplete,
        every byte received since it began is part of it, so after each chunk is parsed, a
        head still incomplete and over the limit is refused (memory stays bounded: one chunk,
        at most 256 KiB, is parsed before the check). A head that completes within a chunk
        that also holds other bytes (a body, a pipelined request) is measured from what the
        parser gives (`url`, `headers`) when it completes, and if too large, answered by a
        refusing app instead of the service."""

        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
            *,
            limits: Limits = DEFAULT_LIMITS,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop, limits=limits)
            self._head_open = True  # waiting for, or receiving, a request's head
            self._head_exact = True  # _head_bytes counts the head from its first byte
            self._began = False  # the parser has seen the current request's first byte
            self._head_has_bytes = False  # bytes toward the awaited head have arrived
            self._body_open = False  # headers complete, body not yet

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                self._discard(data)
                return
            if self._head_open:
                if not self._began:  # a head starts with this chunk: count it from here
                    self._head_bytes = 0
                    self._head_exact = True
                self._head_has_bytes = True
                self._head_bytes += len(data)
            super().data_received(data)
            # The timers are armed after the chunk is parsed, only if it left a head or a body
            # incomplete: a request that arrives whole (the usual case) costs no timer at all.
            if self._head_open:
                if self._head_bytes > self.limits.max_header_bytes and not self._discarding:
                    self._head_too_large()
                elif self._head_has_bytes and self._timer is None:
                    self._arm(_HEAD, self.limits.header_timeout)
            elif self._body_open and self._timer is None:
                self._arm(_BODY, self.limits.body_timeout)

        def _head_started(self) -> bool:
            return self._head_has_bytes

        def _head_too_large(self) -> None:
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                self._close_after_response(cycle)  # never a 431 in the middle of an answer
                return
            limit = self.limits.max_header_bytes
            self._refuse(431, f"the request line and headers are larger than {limit:,} bytes")

        # parser callbacks (httptools calls them while `data_received` feeds it)
        def on_message_begin(self) -> None:
            self._began = True
            self._head_has_bytes = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_open = False
            self._body_open = True
            self._disarm()
            limit = self.limits.max_header_bytes
            if (not self._head_exact or self._head_bytes > limit) and self._parsed_head() > limit:
                detail = f"the request line and headers are larger than {limit:,} bytes"
                peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
                log.info("%s: 431, %s; closing the connection", peer, detail)
                service, self.app = self.app, _Refusal(431, detail)
                try:
                    super().on_headers_complete()
                finally:
                    self.app = service
                return
            super().on_headers_complete()

        def _parsed_head(self) -> int:
            """The head's size as parsed: the request line and `name: value` lines."""
            size = len(self.parser.get_method()) + len(self.url) + 13  # " ", " HTTP/1.1\r\n\r\n"
            for name, value in self.headers:
                size += len(name) + len(value) + 4
            return size

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._body_open = False
            self._head_open = True
            self._began = False
            self._head_has_bytes = False  # (the parser says when the next one begins)
            self._head_exact = False  # the next head may start within this chunk: not counted
            self._head_bytes = 0
            self._disarm()


class LimitedH11Protocol(_Deadlines, H11Protocol):
    """uvicorn's h11 protocol with the timeouts of `Limits`; the head's size is h11's own
    `max_incomplete_event_size` (uvicorn answers 400 when it is exceeded)."""

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            self._discard(data)
            return
        if self.conn.their_state is h11.IDLE:
            if self._timer is None:
                self._arm(_HEAD, self.limits.header_timeout)
            self._head_bytes += len(data)
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._timer_kind != _BODY:
                self._arm(_BODY, self.limits.body_timeout)
        elif state is not h11.IDLE:  # the request is in (or the connection is done)
            self._disarm()
            self._head_bytes = 0
