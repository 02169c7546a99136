"""compose.yaml's project-built services, started here with podman-compose on the host's network.

`podman-compose -f compose.yaml -f compose.host.yaml up -d s3 s3-init api monitoring`, as the
README's machine without a registry or a bridge network runs it: the S3 server (SeaweedFS, the
recsys-s3:local image), the bucket made by s3-init, the prediction service and the monitoring
service (recsys-api:local, recsys-monitoring:local), every one with `network_mode: host`,
listening on 127.0.0.1 at free ports (compose.host.yaml's `${RECSYS_*_PORT}` variables), under a
project name of its own, with the secrets of images/compose/secrets.sh.

compose.yaml, compose.host.yaml and the files they mount are copied into a temporary folder and
the secrets generated there, so that the repository's own images/compose/secrets/ is not touched.
A snapshot (tests/api_snapshots.publish_world, the demo world) is published into the bucket from
the test, through the S3 server's port (much faster than running the pipeline in Airflow); then
the API must be ready on it and recommend with the key (and refuse without), and the monitoring
service must be healthy. Everything is torn down whatever happens (`down -v`, then `podman rm -f`
of the project's containers and `podman volume rm` of its volumes). ~25 s on the 2-core
reference machine with the images built.

Needs the images (`make base-image images BASE_IMAGE=localhost/recsys-base:bookworm`, and
recsys-s3:local: `CONTAINERS_CONF=images/containers.conf images/build.sh s3 <that base>`),
podman and runc (`make tools`), podman-compose (the dev environment: `make install`), root
(rootful podman). Prometheus, Alertmanager and Grafana are not started: their official images
cannot be pulled here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from recsys.lake import Lake
from recsys.settings import REPO_ROOT
from tests.api_snapshots import publish_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGES = REPO_ROOT / "images"
BASE_IMAGE = "localhost/recsys-base:bookworm"
# the project's images the stack runs, built from this tree by the test (podman's layer cache
# makes a rebuild of unchanged code seconds)
PROJECT_IMAGES = ("api", "monitoring", "s3")
SERVICES = ["s3", "s3-init", "api", "monitoring"]
PORTS = [  # compose.host.yaml's variables
    "RECSYS_API_PORT",
    "RECSYS_MONITORING_PORT",
    "RECSYS_AIRFLOW_PORT",
    "RECSYS_S3_PORT",
    "RECSYS_S3_S3_GRPC_PORT",
    "RECSYS_S3_MASTER_PORT",
    "RECSYS_S3_MASTER_GRPC_PORT",
    "RECSYS_S3_VOLUME_PORT",
    "RECSYS_S3_VOLUME_GRPC_PORT",
    "RECSYS_S3_FILER_PORT",
    "RECSYS_S3_FILER_GRPC_PORT",
]
VISITOR = 1001  # has a published list in tests/api_snapshots.default_world()


def podman_compose_binary() -> str:
    venv = Path(sys.executable).parent  # a dev dependency: next to the running python
    found = shutil.which("podman-compose", path=str(venv)) or shutil.which("podman-compose")
    if found is None:
        raise RuntimeError("podman-compose missing: run `make install` (a dev dependency)")
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Stack:
    folder: Path
    project: str
    ports: dict[str, int]
    env: dict[str, str]
    compose: list[str]  # podman-compose with the files and the project name

    def run(self, *args: str, timeout: float = 180, check: bool = True) -> str:
        done = subprocess.run(
            [*self.compose, *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        out = done.stdout + done.stderr
        if check:
            assert done.returncode == 0, f"podman-compose {' '.join(args)}:\n{out[-6000:]}"
        return out

    def podman(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"  # podman-compose's naming

    def secret(self, name: str) -> str:
        return (self.folder / "images" / "compose" / "secrets" / name).read_text().strip()

    def url(self, variable: str) -> str:
        return f"http://127.0.0.1:{self.ports[variable]}"


def check_tools(env: dict[str, str]) -> None:
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing: run `make tools` (make test does it)")
    if os.geteuid() != 0:
        raise RuntimeError("rootful podman (network_mode: host) needs root")
    build = subprocess.run(
        [str(IMAGES / "base.sh"), BASE_IMAGE], env=env, capture_output=True, text=True, timeout=900
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    for name in PROJECT_IMAGES:  # recsys-<name>:local, what compose.yaml names
        build = subprocess.run(
            [str(IMAGES / "build.sh"), name, BASE_IMAGE],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert build.returncode == 0, f"{name}: " + build.stdout[-4000:] + build.stderr[-3000:]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    env = {**os.environ, "CONTAINERS_CONF": str(IMAGES / "containers.conf")}
    compose_bin = podman_compose_binary()
    check_tools(env)
    # a copy of what the services use: the compose files, s3-init's script, the secrets script
    folder = tmp_path / "stack"
    (folder / "images" / "compose").mkdir(parents=True)
    for name in ("compose.yaml", "compose.host.yaml"):
        shutil.copy2(REPO_ROOT / name, folder / name)
    for name in ("create_bucket.py", "secrets.sh"):
        shutil.copy2(IMAGES / "compose" / name, folder / "images" / "compose" / name)
    secrets = subprocess.run(
        ["sh", str(folder / "images" / "compose" / "secrets.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert secrets.returncode == 0, secrets.stdout + secrets.stderr
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    env.update({name: str(port) for name, port in ports.items()})
    project = f"recsys-compose-test-{uuid.uuid4().hex[:8]}"
    compose = [compose_bin, "-p", project, "-f", "compose.yaml", "-f", "compose.host.yaml"]
    stack = Stack(folder, project, ports, env, compose)
    try:
        yield stack
    finally:
        for service in SERVICES:
            logs = stack.podman("logs", stack.container(service))
            print(f"\n--- {service} log:\n{(logs.stdout + logs.stderr)[-2000:]}")
        down = stack.run("down", "-v", "-t", "5", timeout=120, check=False)
        print(f"\n--- down:\n{down[-2000:]}")
        # the fallback, whatever down managed: the project's containers and volumes
        label = f"label=io.podman.compose.project={project}"
        left = stack.podman("ps", "-aq", "--filter", label).stdout.split()
        if left:
            stack.podman("rm", "-f", "-t", "2", *left)
        volumes = stack.podman("volume", "ls", "-q", "--filter", label).stdout.split()
        if volumes:
            stack.podman("volume", "rm", "-f", *volumes)


def wait_exited(stack: Stack, service: str, seconds: float) -> int:
    name = stack.container(service)
    deadline = time.monotonic() + seconds
    while True:
        state = stack.podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name)
        status, _, code = state.stdout.strip().partition(" ")
        if status in ("exited", "stopped"):
            return int(code)
        assert time.monotonic() < deadline, f"{service} did not finish: {state.stdout}"
        time.sleep(0.5)


def wait_http(stack: Stack, service: str, url: str, seconds: float) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        try:
            answer = httpx.get(url, timeout=2)
            if answer.status_code == 200:
                return answer
        except httpx.HTTPError:
            pass
        state = stack.podman("inspect", "--format", "{{.State.Status}}", stack.container(service))
        assert state.stdout.strip() == "running", f"{service} is {state.stdout.strip()}"
        assert time.monotonic() < deadline, f"{url} did not answer 200 in {seconds} s"
        time.sleep(0.5)


@pytest.mark.timeout(600)
def test_project_services_start_under_podman_compose(stack: Stack) -> None:
    started = time.monotonic()
    # the S3 server and the bucket first
    stack.run("up", "-d", "s3", "s3-init")
    assert wait_exited(stack, "s3-init", 120) == 0
    bucket_s = time.monotonic() - started

    # a snapshot into the lake, through the S3 server's port on the host's loopback
    lake = Lake(
        "s3://recsys-lake/lake",
        {
            "key": stack.secret("aws_access_key_id"),
            "secret": stack.secret("aws_secret_access_key"),
            "endpoint_url": stack.url("RECSYS_S3_PORT"),
            "client_kwargs": {"region_name": "us-east-1"},
            "use_listings_cache": False,
        },
    )
    published = publish_world(lake)

    # the invocation of compose.host.yaml's header: s3 and s3-init are there already
    stack.run("up", "-d", *SERVICES)
    api = stack.url("RECSYS_API_PORT")
    ready = wait_http(stack, "api", f"{api}/readyz", 120)
    assert ready.json()["snapshot_version"] == published.version
    monitoring = stack.url("RECSYS_MONITORING_PORT")
    assert wait_http(stack, "monitoring", f"{monitoring}/healthz", 120).status_code == 200
    print(
        f"\nbucket in {bucket_s:.1f} s, api and monitoring up in "
        f"{time.monotonic() - started:.1f} s ({stack.project})"
    )

    path = f"/v1/recommendations/{VISITOR}?k=5"
    assert httpx.get(f"{api}{path}", timeout=10).status_code == 401
    key = stack.secret("api_keys").split(",")[0].strip()
    answer = httpx.get(f"{api}{path}", headers={"X-API-Key": key}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["visitor_id"] == VISITOR
    assert body["snapshot_version"] == published.version
    assert [item["item_id"] for item in body["items"]] == [1, 2, 3, 4, 5]

    # as compose.yaml says: host network, non-root, read-only root file system
    for service in ("s3", "api", "monitoring"):
        inspect = stack.podman(
            "inspect",
            "--format",
            "{{.HostConfig.NetworkMode}} {{.HostConfig.ReadonlyRootfs}} {{.Config.User}}",
            stack.container(service),
        )
        assert inspect.stdout.split() == ["host", "true", "10001:10001"], (service, inspect)
