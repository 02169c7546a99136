"""Shared fixtures: generated data, settings pointing at a temporary data dir, the S3 server."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys.generate import generate
from recsys.settings import REPO_ROOT, Settings
from tests.s3server import s3_bucket, seaweed_s3  # noqa: F401  (fixtures)

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# `make test` runs the suite in two pytest-xdist workers. dbt writes its parse cache, compiled
# SQL and logs under the project folder; each worker gets folders of its own (dbt reads these
# variables, and every process a test starts inherits them), so that two dbt runs never write
# the same file.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    from recsys.settings import DBT_PROJECT_DIR

    os.environ.setdefault("DBT_TARGET_PATH", str(DBT_PROJECT_DIR / "target" / _WORKER))
    os.environ.setdefault("DBT_LOG_PATH", str(DBT_PROJECT_DIR / "logs" / _WORKER))


def dbt_target_dir() -> Path:
    """Where dbt writes its artifacts in this test process."""
    from recsys.settings import DBT_PROJECT_DIR

    return Path(os.environ.get("DBT_TARGET_PATH") or DBT_PROJECT_DIR / "target")


SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "retailrocket_sample"


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny generated data in the RetailRocket layout, made once per session."""
    out = tmp_path_factory.mktemp("tiny_raw")
    generate("tiny", 3, out)
    return out


CLOUD_VARIABLES = (
    "RECSYS_LAKE_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for a fresh local data dir; the environment says the same for subprocesses."""
    for name in CLOUD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "data"))
    return Settings(_env_file=None)  # type: ignore[call-arg]


@dataclass(frozen=True)
class TinyRun:
    """What `recsys run` left behind on tiny data: its data dir, output and exit code."""

    data_dir: Path
    output: str
    exit_code: int

    def copy(self, to: Path) -> Path:
        """A private copy of the data dir, for a test that changes it."""
        shutil.copytree(self.data_dir, to)
        return to


@pytest.fixture(scope="session")
def tiny_run(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """`recsys run` on tiny data once per session (~2 minutes): ingest, train, evaluate and
    publish, as a user runs it. Tests read it; a test that changes it works on `copy()`."""
    from recsys.cli import main

    data_dir = tmp_path_factory.mktemp("tiny_run") / "data"
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(output):
        for name in CLOUD_VARIABLES:
            env.delenv(name, raising=False)
        env.setenv("RECSYS_DATA_DIR", str(data_dir))
        code = main(["run", "--raw-dir", str(tiny_raw), "--search-budget", "3", "--force"])
    return TinyRun(data_dir, output.getvalue(), code)
