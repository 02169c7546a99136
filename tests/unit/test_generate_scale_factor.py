"""`--scale-factor`: a named scale's counts times a factor, events growing linearly with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from recsys.cli import main
from recsys.generate import (
    LATENT_FILE,
    MAX_SCALE_FACTOR,
    SCALES,
    check_scale_factor,
    generate,
    scaled,
)

Generated = tuple[Path, dict[str, int | float]]


@pytest.fixture(scope="module")
def small_and_half(tmp_path_factory: pytest.TempPathFactory) -> tuple[Generated, Generated]:
    full, half = tmp_path_factory.mktemp("small"), tmp_path_factory.mktemp("small_half")
    return (full, generate("small", 42, full)), (
        half,
        generate("small", 42, half, scale_factor=0.5),
    )


def meta_of(folder: Path) -> dict[str, object]:
    with np.load(folder / LATENT_FILE, allow_pickle=False) as data:
        meta: dict[str, object] = json.loads(str(data["meta"]))
    return meta


def test_half_the_factor_is_half_the_visitors_items_and_events(
    small_and_half: tuple[Generated, Generated],
) -> None:
    (_, one), (_, half) = small_and_half
    assert half["visitors"] == round(SCALES["small"].n_visitors * 0.5)
    assert half["items_with_properties"] == pytest.approx(
        one["items_with_properties"] / 2, rel=0.03
    )
    assert half["categories"] == SCALES["small"].n_categories // 2
    for count in ("events", "views", "items_with_events"):
        assert half[count] == pytest.approx(one[count] / 2, rel=0.05), count
    # the shape stays: events per visitor, one-event visitors, properties per item
    assert half["single_event_visitor_share"] == pytest.approx(
        one["single_event_visitor_share"], abs=0.01
    )
    assert half["property_rows"] / half["items_with_properties"] == pytest.approx(
        one["property_rows"] / one["items_with_properties"], rel=0.03
    )


def test_the_factor_is_recorded(small_and_half: tuple[Generated, Generated]) -> None:
    (one_dir, one), (half_dir, half) = small_and_half
    assert (one["scale_factor"], half["scale_factor"]) == (1.0, 0.5)
    assert meta_of(half_dir)["scale"] == "small"
    assert meta_of(half_dir)["scale_factor"] == 0.5
    # the default's latent state is the same bytes as before the factor existed: no key
    assert "scale_factor" not in meta_of(one_dir)


def test_factor_one_is_the_named_scale_itself() -> None:
    for scale in SCALES.values():
        assert scaled(scale, 1.0) is scale
        assert scaled(scale, 1) is scale


def test_only_the_size_bearing_counts_change() -> None:
    full, quarter = SCALES["full"], scaled(SCALES["full"], 0.25)
    assert quarter.n_visitors == round(full.n_visitors / 4)
    assert quarter.n_items == round(full.n_items / 4)
    assert quarter.n_categories == round(full.n_categories / 4)
    assert quarter.n_roots == full.n_roots
    assert quarter.active_item_share == full.active_item_share
    assert quarter.n_hashed_properties == full.n_hashed_properties
    assert quarter.hashed_per_item == full.hashed_per_item
    assert scaled(SCALES["small"], 2.0).n_visitors == 2 * SCALES["small"].n_visitors


@pytest.mark.parametrize(
    "factor", [0, 0.0, -0.5, math.nan, math.inf, -math.inf, MAX_SCALE_FACTOR + 0.01, 100, "x"]
)
def test_invalid_factors_are_refused(factor: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale factor"):
        check_scale_factor(factor)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale factor"):
        generate("tiny", 1, tmp_path, scale_factor=factor)  # type: ignore[arg-type]
    assert not (tmp_path / "events.csv").exists()


def test_the_limits_themselves_are_accepted() -> None:
    assert check_scale_factor(MAX_SCALE_FACTOR) == MAX_SCALE_FACTOR
    assert check_scale_factor("0.25") == 0.25


def test_a_factor_that_leaves_too_little_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="visitors"):
        scaled(SCALES["tiny"], 0.01)
    with pytest.raises(ValueError, match="visitors"):
        generate("tiny", 1, tmp_path, scale_factor=0.01)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "17", "abc"])
def test_the_command_refuses_a_bad_factor(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--scale", "tiny", "--scale-factor", text, "--out", "unused"])
    assert exc.value.code == 2
    assert "--scale-factor" in capsys.readouterr().err


def test_the_command_refuses_a_factor_too_small_for_the_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "raw"
    assert main(["generate", "--scale", "tiny", "--scale-factor", "0.01", "--out", str(out)]) == 2
    assert "error: scale factor 0.01 leaves" in capsys.readouterr().err
    assert not out.exists()


def test_the_command_passes_the_factor_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "raw"
    assert main(["generate", "--scale", "tiny", "--scale-factor", "2", "--out", str(out)]) == 0
    assert '"scale_factor": 2.0' in capsys.readouterr().out
    assert meta_of(out)["scale_factor"] == 2.0
