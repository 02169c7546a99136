"""The `recsys` command: stages print what they did; bad input is a clear error, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.cli import main
from recsys.settings import Settings


def test_generate_then_ingest_prints_the_accounting(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw"
    assert main(["generate", "--scale", "tiny", "--seed", "5", "--out", str(raw)]) == 0
    assert (raw / "events.csv").exists()
    assert main(["ingest", "--raw-dir", str(raw)]) == 0
    out = capsys.readouterr().out
    assert "[generate] done in" in out
    assert "[ingest] done in" in out
    assert "accepted" in out and "rejected" in out
    assert (settings.data_dir / "lake" / "raw" / "events" / "events.parquet").exists()


def test_missing_input_is_exit_code_2_with_the_file_named(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["ingest", "--raw-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "events.csv" in err


def test_unknown_scale_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--scale", "huge", "--out", "x"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["build"], ["train", "--search-budget", "1"], ["evaluate"], ["publish"]]
)
def test_an_empty_lake_is_a_clear_error(
    command: list[str], settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing ingested yet: one line saying so and what to do, not DuckDB's 'No files found'."""
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no events in ") and "recsys ingest --raw-dir" in err
    assert "No files found" not in err and "Traceback" not in err


def test_a_step_before_its_inputs_names_the_step_to_run(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw"
    assert main(["generate", "--scale", "tiny", "--seed", "5", "--out", str(raw)]) == 0
    assert main(["ingest", "--raw-dir", str(raw)]) == 0
    capsys.readouterr()
    assert main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert "does not exist yet: run `recsys train` first" in err and "Traceback" not in err


def test_monitor_before_any_build_names_the_step_to_run(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor"]) == 2
    err = capsys.readouterr().err
    assert "error: no warehouse" in err and "recsys build" in err
