"""What `recsys build --target` puts in dbt's environment, per engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from recsys.cli import build_parser
from recsys.settings import Settings
from recsys.warehouse import BuildError, engine_env


def settings(tmp_path: Path, target: str | None) -> Settings:
    return Settings(recsys_data_dir=tmp_path, recsys_dbt_target=target, _env_file=None)  # type: ignore[call-arg]


def test_duckdb_targets_need_nothing(tmp_path: Path) -> None:
    for target in (None, "local", "s3"):
        assert engine_env(settings(tmp_path, target)) == {}
    assert "RECSYS_DBT_TARGET" not in settings(tmp_path, None).dbt_env()


def test_spark_gets_java_from_the_wheel_and_quiet_logging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    chosen = settings(tmp_path, "spark")
    env = engine_env(chosen)
    assert (Path(env["JAVA_HOME"]) / "bin" / "java").is_file()
    assert (
        "rootLogger.level = error"
        in (Path(env["SPARK_CONF_DIR"]) / "log4j2.properties").read_text()
    )
    assert (tmp_path / "spark").is_dir()  # Spark's warehouse, metastore and logs go here
    assert chosen.dbt_env()["RECSYS_DBT_TARGET"] == "spark"
    # a Java or a Spark configuration of the user's own is kept
    monkeypatch.setenv("JAVA_HOME", "/opt/java")
    monkeypatch.setenv("SPARK_CONF_DIR", "/etc/spark")
    assert engine_env(chosen) == {"JAVA_HOME": "/opt/java", "SPARK_CONF_DIR": "/etc/spark"}


def test_an_empty_target_is_the_default(tmp_path: Path) -> None:
    assert settings(tmp_path, " ").recsys_dbt_target is None


@pytest.mark.parametrize("bad", ["spark; rm -rf /", "../x", "a" * 65, "1spark"])
def test_a_target_name_is_checked_before_it_reaches_dbt(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValidationError):
        settings(tmp_path, bad)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build", "--target", bad or "''"])


def test_the_local_spark_refuses_an_s3_lake_saying_why(tmp_path: Path) -> None:
    on_s3 = Settings(
        recsys_data_dir=tmp_path,
        recsys_dbt_target="spark",
        recsys_lake_uri="s3://bucket/lake",
        _env_file=None,  # type: ignore[call-arg]
    )
    with pytest.raises(BuildError, match=r"local lake only.*S3A"):
        engine_env(on_s3)
    assert not (tmp_path / "spark").exists()
