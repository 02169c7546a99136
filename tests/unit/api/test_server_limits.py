"""api/server.py's limits on real sockets: a uvicorn server in a thread on 127.0.0.1, with a tiny
ASGI app (the limits are the protocol's, not the app's), over both of uvicorn's parsers."""

from __future__ import annotations

import argparse
import asyncio
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.server import LINGER_SECONDS, Limits, protocol_factory, uvicorn_options
from tests.unit.api.conftest import make_settings

PROTOCOLS = ["httptools", "h11"]
SLACK = 1.5  # seconds a timeout may be late on a loaded machine


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, waits `?sleep=` seconds, answers the body's length."""
    events: list[str] = scope["state"]["events"] if "events" in scope.get("state", {}) else []
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            events.append("disconnect")
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    query = scope["query_string"].decode()
    if query.startswith("sleep="):
        await asyncio.sleep(float(query[len("sleep=") :]))
    payload = str(len(body)).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class Running:
    """A uvicorn server in a thread, on a free loopback port."""

    def __init__(self, limits: Limits, protocol: str, **config: Any) -> None:
        self.events: list[str] = []
        events = self.events

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                message = await receive()
                while message["type"] != "lifespan.shutdown":
                    await send({"type": message["type"] + ".complete"})
                    message = await receive()
                await send({"type": "lifespan.shutdown.complete"})
                return
            scope["state"]["events"] = events
            await echo_app(scope, receive, send)

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        options = {
            "http": protocol_factory(limits, use_h11=protocol == "h11"),
            "ws": "none",
            "log_level": "warning",
            "h11_max_incomplete_event_size": limits.max_header_bytes,
            **config,
        }
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)

    def connect(self) -> Conn:
        sock = Conn(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(protocol: str = "httptools", limits: Limits | None = None, **config: Any) -> Running:
        running = Running(limits or Limits(2048, 0.5, 0.5), protocol, **config)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


class Conn(socket.socket):
    """A client socket that keeps what it received past the response it was reading."""

    pending = b""


def read_until_closed(sock: socket.socket, seconds: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or resets) the connection, and when."""
    sock.settimeout(seconds)
    data = getattr(sock, "pending", b"")
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic()


def read_response(sock: Conn) -> tuple[int, bytes]:
    """One response with a Content-Length (status, body), leaving the connection open."""
    sock.settimeout(10)
    data, sock.pending = sock.pending, b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    body, sock.pending = body[:length], body[length:]
    return int(head.split(b" ")[1]), body


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ")[1])


def drip(sock: socket.socket, pieces: Iterable[bytes]) -> bytes:
    """Send `pieces` one every 0.1 s until the server answers or closes: what it sent first
    (b"" when it closed, or when every piece went out unanswered)."""
    for piece in pieces:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        sock.settimeout(0.1)
        try:
            return sock.recv(65536)
        except TimeoutError:
            continue
    return b""


def get(path: str = "/", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def post_head(length: int, path: str = "/") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )


# the head's size


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requests_within_the_limits_are_served_on_one_connection(
    serve: Callable[..., Running], protocol: str
) -> None:
    running = serve(protocol)
    with running.connect() as sock:
        sock.sendall(get(extra=b"X-Pad: " + b"p" * 1500 + b"\r\n"))  # under 2048 in all
        assert read_response(sock) == (200, b"0")
        time.sleep(0.8)  # longer than the header timeout, shorter than keep-alive
        sock.sendall(post_head(100_000) + b"b" * 100_000)  # head and a big body at once
        assert read_response(sock) == (200, b"100000")
        sock.sendall(get() + get() + post_head(3) + b"abc")  # pipelined
        assert [read_response(sock) for _ in range(3)] == [(200, b"0"), (200, b"0"), (200, b"3")]


def test_a_head_over_the_limit_sent_slowly_is_refused_with_431(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
        for _ in range(8):  # 8 x 512 bytes: over 2048 on the 4th piece at the latest
            time.sleep(0.02)
            try:
                sock.sendall(b"a" * 512)
            except (BrokenPipeError, ConnectionResetError):
                break
        data, _ = read_until_closed(sock)
    assert status_of(data) == 431
    assert b'{"detail": "the request line and headers are larger than 2,048 bytes"}' in data
    assert b"connection: close" in data.lower()


@pytest.mark.parametrize("size", [20_000, 1_000_000])
def test_a_head_over_the_limit_sent_at_once_is_refused_with_431(
    serve: Callable[..., Running], size: int
) -> None:
    running = serve(limits=Limits(2048, 5, 5))
    with running.connect() as sock:
        started = time.monotonic()
        # complete (20 kB: parsed in one piece) or not (1 MB: refused at its first piece,
        # the rest drained, so that the client, still sending, can read the answer)
        end = b"\r\n\r\n" if size < 100_000 else b""
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * size + end)
        data, closed = read_until_closed(sock)
    assert status_of(data) == 431
    assert closed - started < LINGER_SECONDS + SLACK


def test_a_pipelined_head_over_the_limit_is_refused_after_the_first_answer(
    serve: Callable[..., Running],
) -> None:
    running = serve()
    with running.connect() as sock:
        sock.sendall(get() + get(extra=b"X-Big: " + b"a" * 20_000 + b"\r\n"))
        assert read_response(sock) == (200, b"0")
        data, _ = read_until_closed(sock)
    assert status_of(data) == 431


@pytest.mark.parametrize("oversized", [True, False])
def test_a_bad_pipelined_head_behind_a_slow_answer_closes_the_connection_after_it(
    serve: Callable[..., Running], oversized: bool
) -> None:
    """The answer in progress is never interrupted: the connection closes after it."""
    running = serve()
    with running.connect() as sock:
        started = time.monotonic()
        sock.sendall(get("/?sleep=1.0"))
        time.sleep(0.1)
        if oversized:
            for _ in range(3):
                sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 2000)
                time.sleep(0.05)
        else:
            sock.sendall(b"GET / HTTP/1.1\r\nHo")  # and nothing more: the header timeout
        assert read_response(sock) == (200, b"0")
        data, closed = read_until_closed(sock)
    assert data == b""
    assert closed - started < 1.0 + SLACK  # not keep-alive's 5 s


def test_with_h11_a_head_over_the_limit_is_refused_with_400(
    serve: Callable[..., Running],
) -> None:
    running = serve("h11")
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 4096)
        data, _ = read_until_closed(sock)
    assert status_of(data) == 400


# timeouts


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_headers_sent_slowly_get_408_after_the_header_timeout(
    serve: Callable[..., Running], protocol: str
) -> None:
    running = serve(protocol)
    with running.connect() as sock:
        started = time.monotonic()
        data = drip(sock, (bytes([byte]) for byte in get()))  # 26 bytes would take 2.6 s
        rest, closed = read_until_closed(sock)
    assert status_of(data + rest) == 408
    assert b"not complete within 0.5 s" in data + rest
    assert 0.45 < closed - started < 0.5 + SLACK


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    serve: Callable[..., Running], protocol: str
) -> None:
    running = serve(protocol)
    with running.connect() as sock:
        started = time.monotonic()
        data, closed = read_until_closed(sock)
    assert data == b""
    assert 0.45 < closed - started < 0.5 + SLACK


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_body_sent_slowly_gets_408_after_the_body_timeout(
    serve: Callable[..., Running], protocol: str
) -> None:
    running = serve(protocol)
    with running.connect() as sock:
        sock.sendall(post_head(100))
        started = time.monotonic()
        data = drip(sock, [b"x"] * 30)
        rest, closed = read_until_closed(sock)
    assert status_of(data + rest) == 408
    assert b"body was not complete within 0.5 s" in data + rest
    assert 0.45 < closed - started < 0.5 + SLACK
    deadline = time.monotonic() + 5
    while "disconnect" not in running.events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.events == ["disconnect"]  # the app's receive() was told


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_request_in_pieces_within_the_timeouts_is_served(
    serve: Callable[..., Running], protocol: str
) -> None:
    running = serve(protocol)
    with running.connect() as sock:
        for _ in range(2):  # the second on the kept-alive connection
            head = post_head(30)
            sock.sendall(head[:10])
            time.sleep(0.15)
            sock.sendall(head[10:])  # the head in 0.15 s
            for _ in range(3):
                time.sleep(0.1)
                sock.sendall(b"x" * 10)  # the body in 0.3 s
            assert read_response(sock) == (200, b"30")
            time.sleep(0.6)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_empty_lines_forever_on_a_kept_alive_connection_are_cut(
    serve: Callable[..., Running], protocol: str
) -> None:
    """Blank lines before a request line are skipped by httptools: without the header timeout,
    they would keep a connection open for ever (each one resets keep-alive). (h11 answers 400
    at once.)"""
    running = serve(protocol)
    with running.connect() as sock:
        sock.sendall(get())
        assert read_response(sock) == (200, b"0")
        started = time.monotonic()
        for _ in range(30):  # 3 s at most
            try:
                sock.sendall(b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.1)
            try:
                if not sock.recv(65536):
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
        closed = time.monotonic()
    assert closed - started < 0.5 + SLACK
    if protocol == "httptools":
        assert closed - started > 0.45


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_slow_answer_is_not_a_slow_client(serve: Callable[..., Running], protocol: str) -> None:
    running = serve(protocol)
    with running.connect() as sock:
        sock.sendall(get("/?sleep=1.0"))  # longer than both timeouts
        assert read_response(sock) == (200, b"0")
        sock.sendall(post_head(3, "/?sleep=1.0") + b"abc")
        assert read_response(sock) == (200, b"3")


def test_an_idle_kept_alive_connection_is_closed_by_uvicorn(
    serve: Callable[..., Running],
) -> None:
    running = serve(timeout_keep_alive=1)
    with running.connect() as sock:
        sock.sendall(get())
        assert read_response(sock) == (200, b"0")
        answered = time.monotonic()
        data, closed = read_until_closed(sock)
    assert data == b""
    assert 0.9 < closed - answered < 1 + SLACK


def test_connections_beyond_the_concurrency_limit_get_503(
    serve: Callable[..., Running],
) -> None:
    running = serve(limits=Limits(2048, 5, 5), limit_concurrency=3)
    idle = [running.connect() for _ in range(2)]
    try:
        time.sleep(0.2)  # accepted
        with running.connect() as sock:
            sock.sendall(get())
            assert read_response(sock)[0] == 503
    finally:
        for sock in idle:
            sock.close()


# the options


def test_the_options_carry_the_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        recsys_api_max_header_bytes=8192,
        recsys_api_header_timeout_seconds=1.5,
        recsys_api_body_timeout_seconds=2.5,
        recsys_api_max_concurrency=77,
    )
    options = uvicorn_options(settings)
    assert options["limit_concurrency"] == 77
    assert options["h11_max_incomplete_event_size"] == 8192
    assert options["ws"] == "none"
    assert options["http"].keywords == {"limits": Limits(8192, 1.5, 2.5)}
    # `--workers N` pickles uvicorn's Config into each process: the limits go along
    config = uvicorn.Config("api.main:create_app", factory=True, workers=2, **options)
    copy = pickle.loads(pickle.dumps(config))
    assert copy.http.func is options["http"].func
    assert copy.http.keywords == {"limits": Limits(8192, 1.5, 2.5)}


def test_recsys_serve_runs_uvicorn_with_the_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from recsys.cli import cmd_serve

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    settings = make_settings(tmp_path, recsys_api_max_concurrency=9)
    args = argparse.Namespace(
        host="127.0.0.1",
        port=8000,
        workers=2,
        log_level="info",
        access_log=False,
        allow_no_auth=False,
    )
    assert cmd_serve(args, settings) == 0
    (kwargs,) = calls
    assert kwargs["workers"] == 2 and kwargs["factory"] is True
    assert kwargs["limit_concurrency"] == 9
    assert kwargs["http"].keywords == {"limits": Limits(16_384, 5.0, 10.0)}
