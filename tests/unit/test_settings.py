"""Settings: secrets never shown, secrets from files (`*_FILE`), conflicting sources refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import SettingsError

from recsys.lake import Lake
from recsys.settings import Settings

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
API_KEY = "a-key-read-from-a-file-0123456789"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RECSYS_API_KEYS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)


def test_the_aws_secret_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert SECRET not in text
    assert settings.s3_options["secret"] == SECRET  # the one place it is used
    assert settings.dbt_env()["AWS_SECRET_ACCESS_KEY"] == SECRET


def test_secrets_come_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "keys").write_text(f"{API_KEY}\n")
    (tmp_path / "id").write_text("AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY_FILE", str(tmp_path / "secret"))
    monkeypatch.setenv("RECSYS_API_KEYS_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID_FILE", str(tmp_path / "id"))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.api_keys == (API_KEY,)
    assert settings.s3_options["secret"] == SECRET and settings.s3_options["key"] == "AKIDEXAMPLE"
    lake = Lake("s3://bucket/prefix", settings.s3_options)
    assert lake.storage_options["secret"] == SECRET
    # a file's key is checked like any other
    (tmp_path / "keys").write_text("short")
    with pytest.raises(ValueError, match="1 of 1 keys are shorter than 16"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_variable_and_its_file_together_are_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secret").write_text(SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY_FILE", str(tmp_path / "secret"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another")
    with pytest.raises(SettingsError, match="AWS_SECRET_ACCESS_KEY and AWS_SECRET_ACCESS_KEY_FILE"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("content", [None, b"\xff\xfe", b"x" * 70_000])
def test_a_secret_file_that_cannot_be_used_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY_FILE", str(path))
    with pytest.raises(SettingsError, match="AWS_SECRET_ACCESS_KEY_FILE") as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "x" * 100 not in str(info.value)  # the content is never shown


def test_an_empty_variable_beside_its_file_is_an_error_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`RECSYS_API_KEYS: ${RECSYS_API_KEYS:-}` in a compose file once switched auth off."""
    (tmp_path / "keys").write_text(API_KEY)
    monkeypatch.setenv("RECSYS_API_KEYS_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("RECSYS_API_KEYS", "")
    with pytest.raises(SettingsError, match="RECSYS_API_KEYS and RECSYS_API_KEYS_FILE"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.delenv("RECSYS_API_KEYS")
    (tmp_path / "keys").write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_key_file_may_hold_a_key_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "keys").write_text(f"{API_KEY}\n{API_KEY[::-1]}\n")
    monkeypatch.setenv("RECSYS_API_KEYS_FILE", str(tmp_path / "keys"))
    assert Settings(_env_file=None).api_keys == (API_KEY, API_KEY[::-1])  # type: ignore[call-arg]


def test_rates_and_timeouts_are_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RECSYS_API_RATE_LIMIT", "RECSYS_API_HEADER_TIMEOUT_SECONDS"):
        monkeypatch.setenv(name, "inf")
        with pytest.raises(ValueError):
            Settings(_env_file=None)  # type: ignore[call-arg]
        monkeypatch.delenv(name)


def test_an_empty_or_short_webhook_token_is_refused() -> None:
    """An empty token would let any caller post alerts: refused, as a short API key is."""
    from pydantic import ValidationError

    for token in ("", "   ", "short"):
        with pytest.raises(ValidationError, match="RECSYS_MONITORING_WEBHOOK_TOKEN"):
            Settings(_env_file=None, recsys_monitoring_webhook_token=token)  # type: ignore[call-arg]
