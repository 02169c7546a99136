"""Shared fixtures: generated data, settings pointing at a temporary data dir, the S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recsys.generate import generate
from recsys.settings import REPO_ROOT, Settings
from tests.s3server import s3_bucket, seaweed_s3  # noqa: F401  (fixtures)

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "retailrocket_sample"


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny generated data in the RetailRocket layout, made once per session."""
    out = tmp_path_factory.mktemp("tiny_raw")
    generate("tiny", 3, out)
    return out


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for a fresh local data dir; the environment says the same for subprocesses."""
    for name in (
        "RECSYS_LAKE_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "data"))
    return Settings(_env_file=None)  # type: ignore[call-arg]
