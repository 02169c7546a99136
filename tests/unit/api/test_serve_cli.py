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
