"""The API image (images/api.Dockerfile), built here and run the way it is deployed.

The base is the local Debian bookworm image (images/base.sh: debootstrap + `podman import`,
made once per podman storage; no registry is pulled from). The image is built with
images/build.sh (the host's uv cache mounted, so the locked wheels are not downloaded again),
then run with podman: as uid 10001, a read-only root file system, tmpfs for /tmp and the
snapshot cache, every capability dropped, the lake mounted read-only and the API keys as a
mounted file. It listens on 127.0.0.1 with `--network host` (never podman's bridge network).
`/readyz` must say ready and a recommendation must come back with the key, and not without it.

Needs podman, runc and debootstrap (`make tools` installs them) and root (debootstrap, rootful
podman). On the 2-core reference machine: ~100 s with an empty podman storage (debootstrap
~45 s, the build ~45 s from uv's cache), ~12 s once the base and the layers are there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recsys.lake import Lake
from recsys.settings import REPO_ROOT
from tests.api_snapshots import publish_world
from tests.service import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGES = REPO_ROOT / "images"
BASE_IMAGE = "localhost/recsys-base:bookworm"
TAG = "localhost/recsys-api:test"  # not :local, which `make images` builds from the slim base
API_KEY = "images-test-key-" + uuid.uuid4().hex
VISITOR = 1001  # has a published list in tests/api_snapshots.default_world()


def podman_env() -> dict[str, str]:
    """podman with the project's settings: runc and explicit ulimits (images/containers.conf)."""
    return {**os.environ, "CONTAINERS_CONF": str(IMAGES / "containers.conf")}


def run(args: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, env=podman_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert done.returncode == 0, (
            f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-4000:]}\n"
            f"{done.stderr[-4000:]}"
        )
    return done


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args], timeout, check)


@pytest.fixture(scope="module")
def api_image() -> str:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing: run `make tools` (make test does it)")
    if os.geteuid() != 0:
        raise RuntimeError("debootstrap and rootful podman need root")
    start = time.monotonic()
    base = run([str(IMAGES / "base.sh"), BASE_IMAGE], timeout=900)
    base_s = time.monotonic() - start
    build = subprocess.run(
        [str(IMAGES / "build.sh"), "api", BASE_IMAGE],
        env={**podman_env(), "TAG": TAG},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-4000:]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    print(
        f"\nbase image: {base.stdout.strip().splitlines()[-1]} ({base_s:.0f} s)"
        f"\napi image {TAG}: built in {time.monotonic() - start - base_s:.0f} s, "
        f"{size / 1e6:.0f} MB"
    )
    return TAG


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, str]:
    """A local lake with one published snapshot, readable by the container's user."""
    root = tmp_path / "lake"
    published = publish_world(Lake(str(root)))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root, published.version


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    path = secrets / "api_keys"
    path.write_text(API_KEY + "\n")
    os.chown(path, 10001, 10001)  # as a secret is mounted for the container's user
    path.chmod(0o400)
    return path


@pytest.fixture
def container(api_image: str, lake: tuple[Path, str], keys_file: Path) -> Iterator[tuple[str, str]]:
    name = f"recsys-api-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    podman(
        "run", "--detach", "--name", name,
        "--network", "host",  # reached on 127.0.0.1 only: it listens there (below)
        "--user", "10001:10001",
        "--read-only",
        "--tmpfs", "/tmp:rw,size=256m,mode=1777",
        "--tmpfs", "/var/cache/recsys:rw,size=256m,mode=0700,U",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--volume", f"{lake[0]}:/lake:ro",
        "--volume", f"{keys_file}:/run/secrets/api_keys:ro",
        "--env", "RECSYS_LAKE_URI=/lake",
        "--env", "RECSYS_API_KEYS_FILE=/run/secrets/api_keys",
        # the lake is read-only here: nothing to land the impressions in
        "--env", "RECSYS_IMPRESSIONS_LOG=false",
        "--env", f"RECSYS_HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz",
        api_image,
        "serve", "--host", "127.0.0.1", "--port", str(port),
    )  # fmt: skip
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        logs = podman("logs", name, check=False)
        print(f"\ncontainer {name} log:\n{(logs.stdout + logs.stderr)[-3000:]}")
        podman("rm", "--force", "--time", "5", name, check=False)


def wait_ready(name: str, url: str, seconds: float = 120) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        try:
            answer = httpx.get(f"{url}/readyz", timeout=2)
            if answer.status_code == 200:
                return answer
        except httpx.HTTPError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        assert state == "running", f"the container is {state}"
        assert time.monotonic() < deadline, "the container was not ready in time"
        time.sleep(0.25)


@pytest.mark.timeout(1800)  # a cold podman storage: debootstrap, then the whole build
def test_api_image_serves_as_non_root_on_a_read_only_root(
    container: tuple[str, str], lake: tuple[Path, str]
) -> None:
    name, url = container
    started = time.monotonic()
    ready = wait_ready(name, url)
    print(f"\nready in {time.monotonic() - started:.1f} s")
    assert ready.json()["snapshot_version"] == lake[1]

    path = f"/v1/recommendations/{VISITOR}?k=5"
    assert httpx.get(f"{url}{path}", timeout=10).status_code == 401
    answer = httpx.get(f"{url}{path}", headers={"X-API-Key": API_KEY}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["visitor_id"] == VISITOR
    assert body["strategy"] == "personalized"
    assert body["snapshot_version"] == lake[1]
    assert [item["item_id"] for item in body["items"]] == [1, 2, 3, 4, 5]

    # what the container is: its user, a read-only root, a working HEALTHCHECK, no build tools
    inspect = podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}", name)
    assert inspect.stdout.split() == ["true", "10001:10001"]
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    probe = podman(
        "exec", name, "sh", "-c",
        "touch /opt/venv/x 2>&1; touch /tmp/x && echo tmp-ok; "
        "for tool in uv pip gcc cc make; do command -v $tool >/dev/null && echo has-$tool; done; "
        "test -e /opt/uv && echo has-/opt/uv; test -e /root/.cache && echo has-cache; "
        "python -m pip --version 2>&1; exit 0",
    )  # fmt: skip
    out = probe.stdout
    assert "Read-only file system" in out and "tmp-ok" in out, out
    assert "has-" not in out and "No module named pip" in out, out
    assert podman("healthcheck", "run", name).returncode == 0
