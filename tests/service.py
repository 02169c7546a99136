"""`recsys serve` as a real process on 127.0.0.1, for the tests that need the server itself
(uvicorn, limits, swaps, Prometheus scrapes, S3 lakes, a kill -9)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from recsys.settings import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any recsys or AWS setting, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "AWS_"))}
    return {**env, **values}


def start(
    env: dict[str, str],
    log: Path,
    port: int | None = None,
    ready_within: float = 90.0,
    python: str = sys.executable,
    args: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """`recsys serve --port PORT` with `env` (and the interpreter `python`), its output in
    `log`; (process, URL) once `/readyz` answers 200. AssertionError, with the end of the log,
    when it stops or is not ready in time (it is killed then)."""
    port = port or free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [python, "-m", "recsys.cli", "serve", "--port", str(port), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_within
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the service stopped:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            stop(process)
            raise AssertionError(f"the service was not ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the service this test started (by its process), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[str]:
    """The service for the block; its URL."""
    process, url = start(env, log)
    try:
        yield url
    finally:
        stop(process)
