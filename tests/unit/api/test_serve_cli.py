"""`recsys serve`: its options, and the refusal to listen openly without keys."""

from __future__ import annotations

import pytest

from recsys.cli import build_parser, main, serve_log_config


def test_defaults_are_local() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.workers, args.access_log) == ("127.0.0.1", 8000, 1, False)
    args = build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "9000", "--workers", "3"]
    )
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 9000, 3)


def test_a_public_address_without_keys_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("RECSYS_API_KEYS", raising=False)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "without RECSYS_API_KEYS" in capsys.readouterr().err


def test_the_service_logs_through_uvicorns_handlers() -> None:
    config = serve_log_config("warning")
    assert config["loggers"]["api"] == {  # type: ignore[index]
        "handlers": ["default"],
        "level": "WARNING",
        "propagate": False,
    }


def test_bad_settings_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RECSYS_API_KEYS", "short-secret-1")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: settings:") and "short-secret-1" not in err
    monkeypatch.setenv("RECSYS_API_KEYS_FILE", str(tmp_path / "missing"))
    assert main(["serve"]) == 2
    assert "RECSYS_API_KEYS and RECSYS_API_KEYS_FILE are both set" in capsys.readouterr().err
