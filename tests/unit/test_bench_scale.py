"""The scaling benchmark's arithmetic: power-law fits, extrapolated limits, step windows."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from recsys.settings import REPO_ROOT

# the benchmark scripts import their helper (`measure`) from their own folder, as a script does
if str(REPO_ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
bench_scale = importlib.import_module("bench_scale")


def test_a_power_law_is_fitted_exactly() -> None:
    sizes = [1e5, 2e5, 4e5, 8e5]
    fit = bench_scale.fit_power(sizes, [3e-4 * s**1.3 for s in sizes])
    assert fit is not None
    assert fit.b == pytest.approx(1.3)
    assert fit.a == pytest.approx(3e-4)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.at(1.6e6) == pytest.approx(3e-4 * 1.6e6**1.3)


def test_a_noisy_series_gets_the_least_squares_exponent() -> None:
    # log-log points (0, 0), (1, 1.1), (2, 1.9): slope 0.95 by least squares
    fit = bench_scale.fit_power([1, math.e, math.e**2], [1, math.e**1.1, math.e**1.9])
    assert fit is not None
    assert fit.b == pytest.approx(0.95)
    assert 0.9 < fit.r2 < 1.0


def test_a_fit_needs_two_distinct_positive_sizes() -> None:
    assert bench_scale.fit_power([1e5], [2.0]) is None
    assert bench_scale.fit_power([1e5, 1e5], [2.0, 3.0]) is None
    assert bench_scale.fit_power([1e5, 2e5], [0.0, 3.0]) is None  # log of 0
    assert bench_scale.fit_power([1e5, 2e5, 4e5], [0.0, 3.0, 6.0]) is not None


def test_the_size_where_a_curve_reaches_a_target() -> None:
    fit = bench_scale.Fit(a=1e-6, b=1.0, r2=1.0)  # 1 GB per million events
    assert bench_scale.size_reaching([fit], 20.0) == pytest.approx(2e7, rel=1e-6)
    square = bench_scale.Fit(a=1e-12, b=2.0, r2=1.0)
    assert bench_scale.size_reaching([square], 100.0) == pytest.approx(1e7, rel=1e-6)


def test_the_size_where_a_sum_of_curves_reaches_a_target() -> None:
    # 10 + 10 = 20 at size 1e7: each alone would need twice as far
    fits = [bench_scale.Fit(1e-6, 1.0, 1.0), bench_scale.Fit(1e-6, 1.0, 1.0)]
    assert bench_scale.size_reaching(fits, 20.0) == pytest.approx(1e7, rel=1e-6)


def test_a_flat_or_shrinking_curve_never_reaches_the_target() -> None:
    assert bench_scale.size_reaching([bench_scale.Fit(0.5, 0.0, 1.0)], 20.0) == math.inf
    assert bench_scale.size_reaching([bench_scale.Fit(5.0, -0.2, 1.0)], 20.0) == math.inf
    assert bench_scale.size_reaching([], 20.0) == math.inf


def test_the_search_starts_at_the_smallest_size_and_stops_at_the_largest() -> None:
    # a shrinking curve is high at tiny sizes: that is not where a limit is looked for
    shrinking = bench_scale.Fit(1e4, -0.5, 1.0)  # 10 at 1e6
    assert bench_scale.size_reaching([shrinking], 20.0) == 1.0
    assert bench_scale.size_reaching([shrinking], 20.0, min_size=1e6) == math.inf
    already = bench_scale.Fit(30.0, 0.1, 1.0)
    assert bench_scale.size_reaching([already], 20.0, min_size=1e6) == 1e6
    linear = bench_scale.Fit(1e-6, 1.0, 1.0)  # 20 at 2e7
    assert bench_scale.size_reaching([linear], 20.0, max_size=1e7) == math.inf


def test_events_per_factor() -> None:
    assert bench_scale.events_per_factor([0.5, 1.0, 2.0], [500, 1_010, 1_990]) == pytest.approx(
        (1_000 + 1_010 + 995) / 3
    )


def test_the_peak_inside_a_window() -> None:
    samples = [(0.0, 1.0), (1.0, 5.0), (2.0, 2.0), (3.0, 7.0)]
    assert bench_scale.window_peak(samples, 0.5, 2.5) == 5.0
    assert bench_scale.window_peak(samples, 0.0, 3.0) == 7.0
    # a step shorter than the sampling: the sample nearest its middle
    assert bench_scale.window_peak(samples, 2.1, 2.2) == 2.0
    assert bench_scale.window_peak([], 0.0, 1.0) == 0.0
    assert bench_scale.value_at(samples, 0.9) == 5.0


def test_a_step_is_found_by_its_lines() -> None:
    lines = [
        (1.0, "dbt build as of 2015-08-22"),
        (5.0, "  features built (4.0s)"),
        (9.0, "  wrote 10 candidates for 2 visitors (...) and 3 similar-item pairs (0.2s)"),
        (11.0, "  ranking features built (2.1s)"),
        (30.0, "ranker: NDCG@10 0.60 on 797 held-out visitors"),
        (31.0, "  ranking features built (2.1s)"),
    ]
    als = bench_scale.step_window(lines, "  features built (", "similar-item pairs (")
    assert als == (5.0, 9.0)
    assert bench_scale.STAGES[2].start == "  features built ("  # not the ranking build's line
    ranker = bench_scale.step_window(lines, "ranking features built (", "ranker: NDCG@10")
    assert ranker == (11.0, 30.0)
    with pytest.raises(ValueError, match="no line with 'missing'"):
        bench_scale.step_window(lines, "missing", "ranker")
    with pytest.raises(ValueError, match="after the one with"):
        bench_scale.step_window(lines, "ranker: NDCG@10", "similar-item pairs (")


def synthetic_runs() -> list[dict[str, Any]]:
    """Runs whose figures follow known power laws: ALS memory linear (1 GB per million events),
    everything else flat at 0.5 GB; every process's seconds linear, 100 s per million events."""
    runs = []
    for factor in (0.5, 1.0, 2.0):
        events = int(2_000_000 * factor)
        linear = events / 1e6
        row = {"seconds": 100 * linear, "peak_gb": 0.5}
        stages = {name: dict(row) for name in bench_scale.STAGE_NAMES}
        stages["ALS fit"] = {"seconds": 100 * linear, "peak_gb": linear}
        processes = {
            name: dict(row)
            for name in ("generate", "ingest", "build", "train", "evaluate", "publish", "serve")
        }
        runs.append(
            {
                "factor": factor,
                "events": events,
                "stages": stages,
                "processes": processes,
                "pipeline": {"seconds": 4 * 100 * linear, "peak_gb": 0.5},
                "details": {
                    "als_fit_seconds": 1.0,
                    "als_fitted_nnz": 10,
                    "ranker_seconds": 2.0,
                    "ranker_trials": 3,
                    "snapshot_mb": 4.0,
                    "api_load_seconds": 0.5,
                    "data_gb": 0.1,
                    "raw_gb": 0.05,
                },
            }
        )
    return runs


def synthetic_results() -> dict[str, Any]:
    meta = {
        "scale": "full",
        "seed": 42,
        "cores": 2,
        "ram_gb": 24.0,
        "search_budget_s": 20.0,
        "usable_gb": 20.0,
        "time_budget_s": 3600.0,
    }
    return bench_scale.summarise({"meta": meta, "runs": synthetic_runs()})


def test_the_limits_of_known_power_laws() -> None:
    results = synthetic_results()
    assert results["fits"]["ALS fit"]["peak_gb"]["b"] == pytest.approx(1.0)
    assert results["fits"]["ingest"]["peak_gb"]["b"] == pytest.approx(0.0, abs=1e-9)
    limits = results["limits"]
    assert limits["events_per_factor"] == pytest.approx(2e6)
    assert limits["first_stage_out_of_memory"] == "ALS fit"
    als = limits["memory"]["ALS fit"]
    assert als["events"] == pytest.approx(2e7, rel=1e-6)  # 20 GB at 1 GB per million events
    assert als["factor"] == pytest.approx(10.0, rel=1e-6)
    assert not als["rough"]  # 5 x the largest size measured
    assert limits["memory"]["ingest"]["events"] is None  # flat: never
    assert not limits["memory"]["ingest"]["grows"]
    # the pipeline: 4 processes x 100 s per million events reach 3600 s at 9 M events
    assert limits["pipeline_time"]["events"] == pytest.approx(9e6, rel=1e-6)
    assert limits["pipeline_time"]["factor"] == pytest.approx(4.5, rel=1e-6)
    first, pipeline = results["conclusions"]
    assert first.startswith("the first stage to run out of memory on one machine: ALS fit")
    assert "~10x full scale (20.0 M events)" in first
    assert "the 1 h window at ~4.5x full scale (9.0 M events)" in pipeline


def test_a_single_factor_gives_no_fit_and_says_so() -> None:
    meta = {"scale": "full", "seed": 42, "cores": 2, "ram_gb": 24.0, "search_budget_s": 20.0}
    results = bench_scale.summarise({"meta": meta, "runs": synthetic_runs()[:1]})
    assert results["fits"]["ALS fit"]["seconds"] is None
    assert results["limits"]["first_stage_out_of_memory"] is None
    assert results["limits"]["pipeline_time"] is None
    text = bench_scale.render(results)
    assert "n/a" in text and "no fit (needs two sizes)" in text
    assert results["conclusions"][0] == "memory: no fit (needs two sizes)"


def test_a_limit_far_beyond_the_measured_sizes() -> None:
    runs = synthetic_runs()
    for run in runs:  # ALS memory: a millionth of a GB per million events
        run["stages"]["ALS fit"]["peak_gb"] *= 1e-6
    meta = {"scale": "full", "seed": 42, "cores": 2, "ram_gb": 24.0, "search_budget_s": 20.0}
    results = bench_scale.summarise({"meta": meta, "runs": runs})
    als = results["limits"]["memory"]["ALS fit"]
    assert als["events"] is None and als["grows"]
    assert "ALS fit does not reach 20 GB by 1000x the largest size measured" in bench_scale.render(
        results
    )
    assert results["limits"]["first_stage_out_of_memory"] is None


def test_render_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = synthetic_results()
    text = bench_scale.render(results)
    for name in (*bench_scale.STAGE_NAMES, "recsys train", "pipeline"):
        assert name in text
    assert "1,000,000" in text and "4,000,000" in text  # the events of each factor
    assert "=> the first stage to run out of memory" in text
    docs = tmp_path / "docs" / "bench_scale.png"
    bench_scale.publish_results(results, tmp_path / "out", docs)
    assert (tmp_path / "out" / "scale.png").read_bytes()[:4] == b"\x89PNG"
    assert docs.read_bytes() == (tmp_path / "out" / "scale.png").read_bytes()
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again["limits"]["first_stage_out_of_memory"] == "ALS fit"
    # a results file renders again without running anything (`--from-json`)
    assert bench_scale.render(bench_scale.summarise(again)) == text


def test_the_last_doubling_extrapolates_with_the_growth_at_the_largest_sizes() -> None:
    """A stage whose memory is flat and then doubles with the size: the fit over every size
    says it grows slowly, the last doubling says linearly, and reaches the limit sooner."""
    runs = synthetic_runs()
    runs[0]["stages"]["ingest"]["peak_gb"] = 2.0  # 0.5x: as much as 1x (a fixed cost)
    runs[1]["stages"]["ingest"]["peak_gb"] = 2.0
    runs[2]["stages"]["ingest"]["peak_gb"] = 4.0  # 2x: twice 1x
    meta = synthetic_results()["meta"]
    results = bench_scale.summarise({"meta": meta, "runs": runs})
    assert results["fits"]["ingest"]["peak_gb"]["b"] == pytest.approx(0.5, abs=0.01)
    assert results["fits_last_doubling"]["ingest"]["peak_gb"]["b"] == pytest.approx(1.0)
    overall = results["limits"]["memory"]["ingest"]["events"]
    last = results["limits_last_doubling"]["memory"]["ingest"]["events"]
    assert last == pytest.approx(4_000_000 * 20.0 / 4.0, rel=1e-6)  # linear from (4 M, 4 GB)
    assert last < overall
    assert "by the last doubling (1x -> 2x" in bench_scale.render(results)
    # with two sizes there is no last doubling beside the fit: it is the fit
    assert "fits_last_doubling" not in bench_scale.summarise({"meta": meta, "runs": runs[1:]})
