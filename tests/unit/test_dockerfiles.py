"""The images' Dockerfiles, .dockerignore and compose.yaml, checked offline (no image is built:
tests/integration/test_images.py builds and runs the API image).

- hadolint on every Dockerfile is clean, with no ignore directive;
- checkov (`--framework dockerfile`) fails no check; its only skips are the listed ones, each
  written next to the code it concerns with its reason;
- each Dockerfile: the base a build argument (`BASE_IMAGE`, the official slim image by
  default), a build stage and a final stage from that base, the final stage with a numeric
  non-root USER, a HEALTHCHECK, no uv, pip, caches or build tools, the venv on PATH; the extras
  each deployable installs, and no other;
- .dockerignore keeps data, environments, tools and build output out of the context;
- compose.yaml is accepted by `podman-compose config`, publishes ports on 127.0.0.1 only, runs
  read-only and non-root, takes its secrets from files and mounts the configs read-only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys.settings import REPO_ROOT

IMAGES = REPO_ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
PROJECT_IMAGES = {"api", "monitoring", "pipeline"}  # `make images`; s3 is compose's S3 server
CHECKOV = REPO_ROOT / ".tools" / "checkov" / "bin" / "checkov"
COMPOSE = REPO_ROOT / "compose.yaml"
DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"

# checkov checks skipped, each with its reason (and an inline `checkov:skip` in the Dockerfile)
CHECKOV_SKIPS = {
    "CKV_DOCKER_7": "FROM ${BASE_IMAGE}: the base is a build argument whose default is pinned "
    "(python:3.11-slim-bookworm); checkov does not resolve ARGs and reads it as untagged",
}

# the extras each image installs (uv sync --extra ...): the deployable's own, nothing else
EXTRAS = {
    "api": ["serve"],
    "monitoring": ["monitor"],
    "pipeline": ["train", "orchestrate", "monitor"],
}


def tool(name: str) -> str:
    """A console script of the project's environment (the dev group), else one on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is missing: `make install` (uv sync) installs it with the dev group"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments left out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, rest = pending.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_there_is_a_dockerfile_per_deployable() -> None:
    names = {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES}
    assert names >= PROJECT_IMAGES, names


def test_hadolint_is_clean_without_ignores() -> None:
    for path in DOCKERFILES:
        assert "hadolint ignore" not in path.read_text(), f"{path.name}: an ignore directive"
    done = subprocess.run(
        [tool("hadolint"), "--no-color", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_checkov_fails_no_check_and_skips_only_the_listed_ones() -> None:
    if not CHECKOV.exists():
        raise RuntimeError(f"{CHECKOV} is missing: run `make tools` (make test does it first)")
    done = subprocess.run(
        [
            str(CHECKOV),
            "--skip-download",
            "--framework",
            "dockerfile",
            "-d",
            str(IMAGES),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(done.stdout)
    report = report if isinstance(report, dict) else report[0]
    results = report["results"]
    failed = [(r["check_id"], r["file_path"]) for r in results.get("failed_checks", [])]
    assert not failed, failed
    skipped = results.get("skipped_checks", [])
    for result in skipped:
        assert result["check_id"] in CHECKOV_SKIPS, result["check_id"]
        # the reason is written in the Dockerfile, beside the skip
        assert len(result.get("check_result", {}).get("suppress_comment", "")) > 20, result
    assert len(results.get("passed_checks", [])) > 50
    assert report["summary"]["parsing_errors"] == 0
    assert {Path(r["file_path"]).name for r in results["passed_checks"]} == {
        p.name for p in DOCKERFILES
    }


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(path: Path) -> None:
    text = path.read_text()
    assert f"ARG BASE_IMAGE={DEFAULT_BASE}\n" in text
    first_from = text.index("\nFROM ")
    assert text.index("ARG BASE_IMAGE=") < first_from  # usable in every FROM
    found = stages(path)
    assert len(found) >= 2, "multi-stage: a build stage and the final one"
    for stage in found:
        assert re.fullmatch(r"\$\{BASE_IMAGE\}( AS \w+)?", stage[0][1]), stage[0]
    final = found[-1]
    keywords = [k for k, _ in final]

    users = [rest for k, rest in final if k == "USER"]
    assert users == ["10001:10001"], users  # numeric: Kubernetes can check runAsNonRoot
    assert keywords.count("HEALTHCHECK") == 1
    assert "ENTRYPOINT" in keywords and "CMD" in keywords
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    # no build tools, package managers or caches in the final stage
    body = "\n".join(rest for k, rest in final if k in ("RUN", "COPY", "ADD", "ENV"))
    for banned in ("uv ", "uv sync", "pip ", "pip install", "/root/.cache", "--mount=type=cache"):
        assert banned not in body, f"{banned!r} in the final stage"
    assert "ADD" not in keywords
    for run in (rest for k, rest in final if k == "RUN" and "apt-get" in rest):
        # a runtime library at most (the pipeline's OpenMP), pinned, and apt's lists removed
        assert path.name == "pipeline.Dockerfile", run
        assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run, run
        assert re.search(r"install -y --no-install-recommends \S+=", run), run
    copies = [rest for k, rest in final if k == "COPY"]
    assert copies and all(c.startswith("--from=build ") for c in copies), copies


@pytest.mark.parametrize("name", sorted(PROJECT_IMAGES))
def test_project_image_environment(name: str) -> None:
    path = IMAGES / f"{name}.Dockerfile"
    build, final = stages(path)[0], stages(path)[-1]
    syncs = [rest for k, rest in build if k == "RUN" and "uv sync" in rest]
    assert len(syncs) == 2, "the locked dependencies, then the project"
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync and "--no-editable" in sync
        assert re.findall(r"--extra (\w+)", sync) == EXTRAS[name], sync
        assert "--all-extras" not in sync
    env = " ".join(rest for k, rest in final if k == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # the root file system is read-only
    # where it writes: /tmp (a tmpfs) or a declared volume
    data_dir = re.search(r"RECSYS_DATA_DIR=(\S+)", env)
    volumes = " ".join(rest for k, rest in final if k == "VOLUME")
    assert data_dir and (data_dir[1].startswith("/tmp/") or data_dir[1] in volumes), env
    if name == "api":
        assert "RECSYS_API_CACHE_DIR=/var/cache/recsys" in env and "/var/cache/recsys" in volumes
    exposes = [rest for k, rest in final if k == "EXPOSE"]
    cmd = json.loads(next(rest for k, rest in final if k == "CMD"))
    assert json.loads(next(rest for k, rest in final if k == "ENTRYPOINT")) == ["recsys"]
    if name == "api":
        assert exposes == ["8000"] and cmd == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    if name == "monitoring":
        assert exposes == ["8001"]
        assert cmd == ["monitor", "serve", "--host", "0.0.0.0", "--port", "8001"]
    # only its own code goes into the image
    copied = " ".join(rest for k, rest in build if k == "COPY")
    assert ("api/" in copied) == (name == "api")
    assert ("models_ml/" in copied) == (name == "pipeline")
    assert ("dags/" in copied) == ("dbt_project/" in copied) == (name == "pipeline")


def test_dockerignore_keeps_data_environments_and_caches_out() -> None:
    lines = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allowlist: nothing is sent unless named"
    for kept_out in ("data/", ".venv/", ".tools/", "target/", "**/__pycache__/", ".env"):
        assert kept_out in lines, kept_out
        assert f"!{kept_out}" not in lines and f"!{kept_out.rstrip('/')}" not in lines
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "uv.lock",
        "README.md",
        "recsys/",
        "api/",
        "models_ml/",
        "monitoring/",
        "dags/",
        "dbt_project/",
    }


def compose_config() -> dict[str, Any]:
    """compose.yaml as `podman-compose config` resolves it (anchors, merges, variables); it
    needs no podman and no network."""
    done = subprocess.run(
        [tool("podman-compose"), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_config()


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "monitoring", "airflow", "s3", "prometheus", "alertmanager", "grafana"):
        assert name in services, name
    for name, dockerfile in (
        ("api", "api"),
        ("monitoring", "monitoring"),
        ("airflow", "pipeline"),
        ("s3", "s3"),
    ):
        build = services[name]["build"]
        assert build["dockerfile"] == f"images/{dockerfile}.Dockerfile"
        assert (REPO_ROOT / build["dockerfile"]).is_file()
        assert services[name]["image"] == f"recsys-{dockerfile}:local"


def test_compose_publishes_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("network_mode") is None, name
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
        assert "expose" not in service or all(str(p).isdigit() for p in service["expose"])


def test_compose_services_are_hardened(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        user = str(service.get("user", ""))
        assert user and user.split(":")[0] not in ("0", "root"), (name, user)
        assert not service.get("privileged"), name


def test_compose_secrets_come_from_files(compose: dict[str, Any]) -> None:
    secrets = compose["secrets"]
    for name, secret in secrets.items():
        assert secret["file"].startswith("./images/compose/secrets/"), name
    ignored = (IMAGES / "compose" / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored  # never committed
    secret_like = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)", re.IGNORECASE)
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        for variable, _ in items:
            if secret_like.search(variable):
                assert variable.endswith("_FILE"), f"{name}: {variable} set in the file"
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            assert source in secrets, (name, source)


def test_compose_mounts_the_projects_configs_read_only(compose: dict[str, Any]) -> None:
    binds = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            spec = volume if isinstance(volume, str) else f"{volume['source']}:{volume['target']}"
            source = spec.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert spec.endswith(":ro"), (name, spec)
                binds.append(Path(REPO_ROOT, source).resolve())
    for config in (
        "monitoring/prometheus/prometheus.yml",
        "monitoring/prometheus/rules",
        "monitoring/alertmanager/alertmanager.yml",
        "monitoring/grafana/provisioning",
    ):
        assert (REPO_ROOT / config).resolve() in binds, config
        assert (REPO_ROOT / config).exists(), config
