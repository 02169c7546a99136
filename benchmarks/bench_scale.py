"""Scaling benchmark: each pipeline stage's seconds and peak memory against data size.

For each factor of `--factors` (of `--scale`, default 0.25 0.5 1 2 x `full`) the generator
writes the data (`recsys generate --scale-factor`; reported, not a pipeline stage) into a work
folder of its own, then every step runs as its own process, as a user runs it: `recsys ingest`,
`recsys build`, `recsys train`, `recsys evaluate`, `recsys publish --force` and `recsys serve`
(until `/readyz` answers 200, then stopped). The six stages:

| stage | measured on | seconds and peak memory |
|---|---|---|
| ingest | `recsys ingest` | the process |
| dbt build | `recsys build` | the process |
| ALS fit | `recsys train`, its ALS step | the step, inside the process |
| ranker training | `recsys train`, its ranker step | the step, inside the process |
| snapshot build | `recsys publish`, scoring to published | the step, inside the process |
| snapshot load | `recsys serve` until `/readyz` is 200 | the process |

A process's peak is `measure.run_measured`'s: the largest sum of resident memory over the
process and its children, sampled every 0.1 s. A step inside a process (the CLI has no command
for ALS alone, nor for the ranker alone) is found by the lines the process prints: the ALS step
runs from `features built` (train's first dbt build done) to the candidates written; the ranker
from `ranking features built` to its `ranker: NDCG@10` line; the snapshot build from publish's
`ranking features built` to `snapshot verified and published`. Its seconds are the time between
those lines, its peak the largest process-tree RSS sampled in between (the same 0.1 s sampling,
beside `run_measured`). That peak includes whatever the process still held from its earlier
steps (the results also keep the RSS when the step began): an upper bound on the step's own.
The snapshot build is publish's scoring of every candidate, the snapshot file written,
verified and published; publish's own dbt build and ALS refit before it count in the
`recsys publish` row. `recsys serve` does not exit, so this script samples its tree itself (the
same way) until it is ready. The table shows the whole processes too (train, evaluate, publish,
and generate), each with its own per-process peak.

Each series is fitted as seconds ~ a * events^b (least squares in log-log over the factors),
and the same for peak GB. From the fits: the size at which each stage's peak would reach
`USABLE_GB` of this machine's memory (the first one limits one machine), and the size at which
the nightly pipeline (`recsys run`'s processes: ingest, train, evaluate, publish) would no longer
fit `TIME_BUDGET_S`. Writes `reports/bench_scale/results.json` and `scale.png` (a copy in
`docs/bench_scale.png`); `--from-json` renders them again from a results file.

    make bench-scale           # or: python benchmarks/bench_scale.py --scale small --factors 0.5 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from measure import run_measured

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0)
DEFAULT_WORK_DIR = REPO / "data" / "bench" / "scale"
RESULTS_DIR = REPO / "reports" / "bench_scale"
DOCS_PLOT = REPO / "docs" / "bench_scale.png"

TOTAL_GB = 24.0  # the reference machine: 2 cores, 24 GB
USABLE_GB = 20.0  # what one process tree may take: the rest for the OS, page cache, the API
TIME_BUDGET_S = 3600.0  # a nightly window for the whole pipeline
EXTRAPOLATION_WARNING = 10.0  # a limit further than this x the largest measured size is rough
MAX_EXTRAPOLATION = 1000.0  # limits are looked for up to this x the largest measured size
SAMPLE_EVERY_S = 0.1
SERVE_TIMEOUT_S = 900.0

GB = 1e9


@dataclass(frozen=True)
class Stage:
    """A stage: a whole process, or the step of a process between two printed lines."""

    name: str
    process: str
    start: str | None = None  # the line that ends the step before (None: the whole process)
    end: str | None = None  # the step's last line

    @property
    def measured_as(self) -> str:
        command = PROCESS_COMMANDS[self.process]
        return f"step of {command}" if self.start else f"process {command}"


PROCESS_COMMANDS = {
    "generate": "`recsys generate`",
    "ingest": "`recsys ingest`",
    "build": "`recsys build`",
    "train": "`recsys train`",
    "evaluate": "`recsys evaluate`",
    "publish": "`recsys publish`",
    "serve": "`recsys serve` to ready",
}
STAGES = (
    Stage("ingest", "ingest"),
    Stage("dbt build", "build"),
    # two spaces: train's feature build line, not its later `ranking features built (`
    Stage("ALS fit", "train", start="  features built (", end="similar-item pairs ("),
    Stage("ranker training", "train", start="ranking features built (", end="ranker: NDCG@10"),
    Stage(
        "snapshot build",
        "publish",
        start="ranking features built (",
        end="snapshot verified and published (",
    ),
    Stage("snapshot load", "serve"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# what `recsys run` does each night, as processes (no generate; train, evaluate and publish each
# run their own dbt builds, so the standalone `recsys build` is not part of it)
PIPELINE = ("ingest", "train", "evaluate", "publish")
PIPELINE_NAME = "pipeline"
PROCESS_ROWS = ("generate", "train", "evaluate", "publish")


# --- fits and limits (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """value ~ a * size^b, fitted by least squares on log(value) against log(size)."""

    a: float
    b: float
    r2: float

    def at(self, size: float) -> float:
        return self.a * size**self.b

    def to_dict(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "r2": self.r2}


def fit_power(sizes: Sequence[float], values: Sequence[float]) -> Fit | None:
    """The power law through (size, value) pairs; None without two distinct positive sizes with
    positive values (a log-log line needs two points)."""
    pairs = [(s, v) for s, v in zip(sizes, values, strict=True) if s > 0 and v > 0]
    if len({s for s, _ in pairs}) < 2:
        return None
    x = np.log([s for s, _ in pairs])
    y = np.log([v for _, v in pairs])
    b, log_a = np.polyfit(x, y, 1)
    residual = y - (log_a + b * x)
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / spread if spread > 0 else 1.0
    return Fit(a=float(math.exp(log_a)), b=float(b), r2=r2)


def size_reaching(
    fits: Sequence[Fit], target: float, min_size: float = 1.0, max_size: float = 1e15
) -> float:
    """The smallest size in [min_size, max_size] at which the sum of the fitted curves reaches
    `target`; math.inf when it does not by `max_size` (a flat or shrinking curve never does)."""
    if not fits:
        return math.inf

    def total(size: float) -> float:
        return sum(f.at(size) for f in fits)

    if total(min_size) >= target:
        return min_size
    grid = np.geomspace(min_size, max_size, 301)
    above = [s for s in grid if total(float(s)) >= target]
    if not above:
        return math.inf
    hi = float(above[0])
    lo = float(grid[max(0, int(np.searchsorted(grid, hi)) - 1)])
    for _ in range(100):  # bisection in log space, between the grid points around the crossing
        mid = math.sqrt(lo * hi)
        if total(mid) >= target:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-9:
            break
    return hi


def events_per_factor(factors: Sequence[float], events: Sequence[float]) -> float:
    """Events of factor 1 of the scale: the mean of events / factor (events grow linearly)."""
    return float(np.mean([e / f for f, e in zip(factors, events, strict=True)]))


def window_peak(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """The largest sampled value in [start, end]; the sample nearest the window when none falls
    inside it (a step shorter than the sampling interval); 0.0 without samples."""
    inside = [v for t, v in samples if start <= t <= end]
    if inside:
        return max(inside)
    if not samples:
        return 0.0
    middle = (start + end) / 2
    return min(samples, key=lambda s: abs(s[0] - middle))[1]


def value_at(samples: Sequence[tuple[float, float]], when: float) -> float:
    """The sampled value nearest `when` (0.0 without samples)."""
    if not samples:
        return 0.0
    return min(samples, key=lambda s: abs(s[0] - when))[1]


def step_window(lines: Sequence[tuple[float, str]], start: str, end: str) -> tuple[float, float]:
    """When the first line containing `start` appeared, and the first line containing `end`
    after it; ValueError naming the missing one (the pipeline's messages changed)."""
    for i, (t_start, text) in enumerate(lines):
        if start in text:
            for t_end, later in lines[i + 1 :]:
                if end in later:
                    return t_start, t_end
            raise ValueError(f"no line with {end!r} after the one with {start!r}")
    raise ValueError(f"no line with {start!r}")


def fits_of(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float] | None]]:
    """Seconds and peak GB fits of every stage, process row and the pipeline, against events."""
    sizes = [float(r["events"]) for r in runs]
    out: dict[str, dict[str, dict[str, float] | None]] = {}
    for name, rows in _series(runs).items():
        out[name] = {}
        for key in ("seconds", "peak_gb"):
            fit = fit_power(sizes, [row[key] for row in rows])
            out[name][key] = fit.to_dict() if fit else None
    return out


def _series(runs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Every measured row, by name, in the order of `runs`."""
    series: dict[str, list[dict[str, float]]] = {}
    for name in STAGE_NAMES:
        series[name] = [r["stages"][name] for r in runs]
    for name in PROCESS_ROWS:
        series[f"recsys {name}"] = [r["processes"][name] for r in runs]
    series[PIPELINE_NAME] = [r["pipeline"] for r in runs]
    return series


def _fit(d: dict[str, float] | None) -> Fit | None:
    return Fit(d["a"], d["b"], d["r2"]) if d else None


def pipeline_fits(runs: Sequence[dict[str, Any]]) -> list[Fit | None]:
    """The seconds fit of each process of the nightly pipeline: their sum is how the pipeline
    is extrapolated (a sum of power laws is not one; far out, the fastest-growing process
    dominates, which one fit through the totals would understate)."""
    sizes = [float(r["events"]) for r in runs]
    return [fit_power(sizes, [r["processes"][p]["seconds"] for r in runs]) for p in PIPELINE]


def limits_of(
    runs: Sequence[dict[str, Any]],
    fits: dict[str, dict[str, dict[str, float] | None]],
    usable_gb: float = USABLE_GB,
    time_budget_s: float = TIME_BUDGET_S,
) -> dict[str, Any]:
    """Where each stage's peak reaches `usable_gb` and where the pipeline's seconds (the sum
    of its processes' fits) reach `time_budget_s`, in events and in factors of the scale."""
    per_factor = events_per_factor([r["factor"] for r in runs], [r["events"] for r in runs])
    sizes = [float(r["events"]) for r in runs]
    smallest, largest = min(sizes), max(sizes)

    def where(curves: Sequence[Fit], target: float) -> dict[str, Any]:
        size = size_reaching(curves, target, smallest, MAX_EXTRAPOLATION * largest)
        finite = math.isfinite(size)
        return {
            "events": size if finite else None,
            "factor": size / per_factor if finite else None,
            "rough": finite and size > EXTRAPOLATION_WARNING * largest,
            # why there is no size: the curve does not grow, or not fast enough to matter
            "grows": any(c.b > 1e-6 for c in curves),
        }

    memory: dict[str, Any] = {}
    for name in (*STAGE_NAMES, *(f"recsys {p}" for p in PROCESS_ROWS)):
        fit = _fit(fits[name]["peak_gb"])
        memory[name] = where([fit], usable_gb) if fit else None
    reached = {n: m["events"] for n, m in memory.items() if m and m["events"] is not None}

    def first_of(names: Sequence[str]) -> str | None:
        among = {n: e for n, e in reached.items() if n in names}
        return min(among, key=lambda n: among[n]) if among else None

    curves = [f for f in pipeline_fits(runs) if f]
    time_limit = where(curves, time_budget_s) if len(curves) == len(PIPELINE) else None
    return {
        "usable_gb": usable_gb,
        "time_budget_s": time_budget_s,
        "events_per_factor": per_factor,
        "memory": memory,
        "first_stage_out_of_memory": first_of(STAGE_NAMES),
        "first_process_out_of_memory": first_of([f"recsys {p}" for p in PROCESS_ROWS]),
        "pipeline_time": time_limit,
    }


def _events(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} G events"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M events"
    return f"{n / 1e3:.0f} k events"


def _times(factor: float) -> str:
    return f"{factor:,.0f}" if factor >= 100 else f"{factor:.2g}" if factor < 1 else f"{factor:.3g}"


def _where(name: str, at: dict[str, Any] | None, scale: str, what: str) -> str:
    if at is None:
        return f"{name}: no fit (needs two sizes)"
    if at["events"] is None:
        if not at.get("grows", True):
            return f"{name} does not reach {what} (its fit does not grow)"
        return f"{name} does not reach {what} by {MAX_EXTRAPOLATION:g}x the largest size measured"
    rough = (
        f"; rough: over {EXTRAPOLATION_WARNING:g}x the largest size measured" if at["rough"] else ""
    )
    return (
        f"{name} reaches {what} at ~{_times(at['factor'])}x {scale} scale "
        f"({_events(at['events'])}{rough})"
    )


def conclusions(results: dict[str, Any]) -> list[str]:
    """The sentences the benchmark ends with."""
    limits, scale = results["limits"], results["meta"]["scale"]
    usable = f"{limits['usable_gb']:g} GB"
    lines = []
    first = limits["first_stage_out_of_memory"]
    if all(limits["memory"][name] is None for name in STAGE_NAMES):
        lines.append("memory: no fit (needs two sizes)")
    elif first is None:
        lines.append(f"no stage's peak memory grows towards {usable} in these measurements")
    else:
        lines.append(
            "the first stage to run out of memory on one machine: "
            + _where(first, limits["memory"][first], scale, usable)
        )
    process = limits.get("first_process_out_of_memory")
    if process is not None:
        lines.append(
            "of whole processes, the first: "
            + _where(f"{process} (all its steps)", limits["memory"][process], scale, usable)
        )
    budget = limits["time_budget_s"]
    window = f"{budget / 3600:g} h" if budget >= 3600 else f"{budget:g} s"
    lines.append(
        _where(
            "the nightly pipeline (ingest, train, evaluate, publish)",
            limits["pipeline_time"],
            scale,
            f"the {window} window",
        )
    )
    return lines


# --- rendering ------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    """The tables, exponents and conclusions as text."""
    runs, fits, limits = results["runs"], results["fits"], results["limits"]
    meta = results["meta"]
    width = 12
    out = [
        f"scale {meta['scale']}, seed {meta['seed']}, {meta['cores']} cores, "
        f"{meta['ram_gb']:.1f} GB of memory; size = generated events"
    ]
    out.append(f"{'factor':<18}" + "".join(f"{r['factor']:>{width - 1}g}x" for r in runs))
    out.append(f"{'events':<18}" + "".join(f"{r['events']:>{width},}" for r in runs))
    kinds = (
        ("seconds", "seconds", ".1f"),
        ("peak_gb", "peak resident memory, GB", ".2f"),
    )
    for key, title, cell in kinds:
        out.append("")
        out.append(f"{title} (b: the exponent of {key} ~ a * events^b)")
        out.append(f"{'':<18}{'':>{width * len(runs)}}{'b':>7}  measured as")
        for name, rows in _series(runs).items():
            if name == "recsys generate" or name == PIPELINE_NAME:
                out.append("")
            fit = fits[name][key]
            b = f"{fit['b']:>7.2f}" if fit else f"{'n/a':>7}"
            values = "".join(f"{row[key]:>{width}{cell}}" for row in rows)
            out.append(f"{name:<18}{values}{b}  {_measured_as(name)}")
    out.append("")
    out.append("inside the steps:")
    for r in runs:
        d = r["details"]
        api_load, label = d.get("api_load_seconds"), f"{r['factor']:g}x"
        out.append(
            f"  {label}: ALS factorisation {d['als_fit_seconds']:.1f} s on "
            f"{d['als_fitted_nnz']:,} interactions; CatBoost {d['ranker_seconds']:.1f} s "
            f"({d['ranker_trials']} trial{'s' if d['ranker_trials'] != 1 else ''}, "
            f"{meta['search_budget_s']:g} s search budget)"
        )
        out.append(
            f"  {'':{len(label)}}  snapshot {d['snapshot_mb']:,.0f} MB, loaded "
            "by the API in "
            + (f"{api_load:.1f} s" if api_load is not None else "?")
            + f"; data folder {d['data_gb']:.1f} GB, CSVs {d['raw_gb']:.2f} GB"
        )
    out.append("")
    usable = f"{limits['usable_gb']:g} GB"
    out.append(f"memory: {usable} usable of {TOTAL_GB:g} GB; each peak extrapolated along its fit:")
    order = sorted(
        limits["memory"].items(),
        key=lambda kv: kv[1]["events"] if kv[1] and kv[1]["events"] else math.inf,
    )
    for name, at in order:
        shown = name if name in STAGE_NAMES else f"{name} (all its steps)"
        out.append("  " + _where(shown, at, meta["scale"], usable))
    out.append("")
    out.extend(f"=> {line}" for line in conclusions(results))
    if "fits_last_doubling" in results:
        last = results["runs"][-2:]
        span = f"{last[0]['factor']:g}x -> {last[1]['factor']:g}x"
        out.append("")
        out.append(f"by the last doubling ({span}: the growth where fixed costs weigh least)")
        for key, title in (("seconds", "seconds"), ("peak_gb", "peak GB")):
            exps = []
            for name in (*STAGE_NAMES, PIPELINE_NAME):
                fit = results["fits_last_doubling"][name][key]
                exps.append(f"{name} {fit['b']:.2f}" if fit else f"{name} n/a")
            out.append(f"  b of {title}: " + ", ".join(exps))
        out.extend(f"=> {line}" for line in results["conclusions_last_doubling"])
    out.extend(
        [
            "",
            "notes: a step inside a process peaks with what the process still held from its",
            "earlier steps (rss_at_start_gb in the JSON); ranker training is capped by its",
            "search budget and its samples of visitors and negatives, so its seconds grow",
            "slowly by design; the constant part of every process (interpreter, libraries)",
            "flattens the exponents at small sizes, so the limits from the fit over every",
            "size are optimistic; the last doubling's are the ones to plan with.",
        ]
    )
    return "\n".join(out)


def _measured_as(name: str) -> str:
    for stage in STAGES:
        if stage.name == name:
            return stage.measured_as
    if name == PIPELINE_NAME:
        return "sum of " + ", ".join(PIPELINE) + " (`recsys run`); peak: the largest"
    return "process (all its steps)"


def plot(results: dict[str, Any], path: Path) -> None:
    """Log-log seconds and peak GB against events, a line per stage, the fits extended
    (dashed) to the usable memory and the time budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, fits, limits = results["runs"], results["fits"], results["limits"]
    sizes = np.array([float(r["events"]) for r in runs])
    reach = [
        m["events"]
        for m in [*limits["memory"].values(), limits["pipeline_time"]]
        if m and m["events"]
    ]
    x_max = min(max([*reach, sizes.max() * 2]) * 1.3, sizes.max() * 100)
    x_fit = np.geomspace(sizes.min(), x_max, 100)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
    series = _series(runs)
    names = [*STAGE_NAMES, PIPELINE_NAME]
    colors = plt.get_cmap("tab10")
    for ax, key, label in (
        (axes[0], "seconds", "seconds"),
        (axes[1], "peak_gb", "peak resident memory (GB)"),
    ):
        for i, name in enumerate(names):
            if key == "peak_gb" and name == PIPELINE_NAME:
                continue
            values = [row[key] for row in series[name]]
            fit = _fit(fits[name][key])
            style = {"color": colors(i), "linewidth": 2.5 if name == PIPELINE_NAME else 1.5}
            shown = f"{name} (b={fit.b:.2f})" if fit else name
            ax.plot(sizes, values, "o-", label=shown, **style)
            # the pipeline is extrapolated as its time limit is: the sum of its processes' fits
            curves = pipeline_fits(runs) if name == PIPELINE_NAME else [fit]
            if all(curves):
                extrapolated = sum(f.a * x_fit**f.b for f in curves if f)
                ax.plot(x_fit, extrapolated, "--", alpha=0.5, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    lines = (
        (axes[0], limits["time_budget_s"], f"{limits['time_budget_s'] / 3600:g} h budget"),
        (axes[1], limits["usable_gb"], f"{limits['usable_gb']:g} GB usable"),
    )
    for ax, level, text in lines:
        ax.axhline(level, color="black", linestyle=":", linewidth=1)
        ax.annotate(text, (x_max, level), va="bottom", ha="right", fontsize=8)
    # where the first stage runs out of memory, and the pipeline out of time
    first = limits["first_stage_out_of_memory"]
    crossings = [
        (axes[1], limits["memory"][first] if first else None, limits["usable_gb"]),
        (axes[0], limits["pipeline_time"], limits["time_budget_s"]),
    ]
    for ax, at, level in crossings:
        if at and at["events"] and at["events"] <= x_max:
            ax.plot([at["events"]], [level], "kx", markersize=10, markeredgewidth=2)
    for ax in axes:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    meta, said = results["meta"], conclusions(results)
    fig.suptitle(
        f"Scaling on {meta['cores']} cores / {meta['ram_gb']:.0f} GB: {meta['scale']} x "
        + ", ".join(f"{r['factor']:g}" for r in runs)
        + " (dashed: fits, extrapolated; x: the limits)\n"
        + "\n".join([said[0], said[-1]]),  # the first stage out of memory; the time limit
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """`results` with its fits, limits and conclusions computed from its runs, over every size
    and, with three sizes or more, over the last doubling: the growth between the two largest
    sizes, where fixed costs weigh least, so its exponents are the ones to extrapolate with
    (the fit over every size is optimistic)."""
    runs = sorted(results["runs"], key=lambda r: r["events"])
    results = {**results, "runs": runs}
    usable = results["meta"].get("usable_gb", USABLE_GB)
    budget = results["meta"].get("time_budget_s", TIME_BUDGET_S)
    spans = {"": runs, "_last_doubling": runs[-2:] if len(runs) >= 3 else None}
    for suffix, measured in spans.items():
        if measured is None:
            continue
        results[f"fits{suffix}"] = fits = fits_of(measured)
        results[f"limits{suffix}"] = limits = limits_of(measured, fits, usable, budget)
        results[f"conclusions{suffix}"] = conclusions({**results, "limits": limits})
    return results


def publish_results(results: dict[str, Any], out_dir: Path, docs_plot: Path | None) -> None:
    """Print the tables; write results.json and scale.png (and its copy for docs/)."""
    print()
    print(render(results))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out_dir / "scale.png")
    written = [out_dir / "results.json", out_dir / "scale.png"]
    if docs_plot is not None:
        docs_plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out_dir / "scale.png", docs_plot)
        written.append(docs_plot)
    print("\nwrote " + ", ".join(str(p) for p in written))


# --- measuring ------------------------------------------------------------------------------


def tree_rss(proc: psutil.Process) -> float:
    """Resident bytes of the children of `proc`, recursively (a child that just exited: 0)."""
    total = 0
    for child in proc.children(recursive=True):
        with suppress(psutil.Error):
            total += child.memory_info().rss
    return float(total)


class Trace:
    """Beside `run_measured`: the RSS of this process's children (the stage's process tree) and
    the time each line of the stage's log appeared, sampled every `SAMPLE_EVERY_S`."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.samples: list[tuple[float, float]] = []  # (perf_counter, GB)
        self.lines: list[tuple[float, str]] = []  # (perf_counter when seen, text)
        self._offset, self._pending = 0, b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trace:
        self.log_path.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read(time.perf_counter())
        if self._pending:
            self.lines.append((time.perf_counter(), self._pending.decode(errors="replace")))

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            now = time.perf_counter()
            with suppress(psutil.Error):
                self.samples.append((now, tree_rss(me) / GB))
            self._read(now)
            self._stop.wait(SAMPLE_EVERY_S)

    def _read(self, now: float) -> None:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *complete, self._pending = (self._pending + data).split(b"\n")
        self.lines.extend((now, line.decode(errors="replace")) for line in complete)


@dataclass
class Measured:
    seconds: float
    peak_gb: float
    start: float
    end: float
    trace: Trace
    log: Path


@contextmanager
def working_dir(path: Path) -> Iterator[None]:
    """Run in `path` (`run_measured` starts its command in the current folder): no `.env` of
    the caller's folder reaches the stages."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_process(name: str, args: list[str], env: dict[str, str], work: Path) -> Measured:
    """`recsys <args>` in `work` as its own process; SystemExit with its log's tail if it fails."""
    log = work / f"{name}.log"
    cmd = [sys.executable, "-m", "recsys.cli", *args]
    with Trace(log) as trace, working_dir(work):
        start = time.perf_counter()
        seconds, peak_gb, code = run_measured(cmd, env, log)
        end = time.perf_counter()
    if code != 0:
        print(log.read_text()[-5000:])
        raise SystemExit(f"{name} failed with exit code {code} (log: {log})")
    return Measured(seconds, peak_gb, start, end, trace, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def serve_until_ready(env: dict[str, str], work: Path) -> Measured:
    """`recsys serve` on a free local port, timed until `/readyz` answers 200 (the published
    snapshot fetched, verified, loaded and warmed), its tree's peak RSS until then; stopped."""
    log = work / "serve.log"
    port = free_port()
    cmd = [sys.executable, "-m", "recsys.cli", "serve", "--port", str(port)]
    with Trace(log) as trace, open(log, "wb") as out:
        start = time.perf_counter()
        server = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while not ready(port):
                if server.poll() is not None or time.perf_counter() - start > SERVE_TIMEOUT_S:
                    raise SystemExit(f"recsys serve did not become ready: see {log}")
                time.sleep(SAMPLE_EVERY_S)
            end = time.perf_counter()
            time.sleep(SAMPLE_EVERY_S * 2)  # one more sample of the ready server
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    peak = window_peak(trace.samples, start, end + SAMPLE_EVERY_S * 2)
    return Measured(end - start, peak, start, end, trace, log)


def _generated_counts(log: Path) -> dict[str, Any]:
    for line in log.read_text().splitlines():
        if line.startswith("wrote RetailRocket-layout CSVs to "):
            counts: dict[str, Any] = json.loads(line[line.index(": {") + 2 :])
            return counts
    raise SystemExit(f"no counts in {log}")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _api_load_seconds(log: Path) -> float | None:
    for line in log.read_text().splitlines():
        if "serving snapshot" in line and "loaded in " in line:
            return float(line.split("loaded in ", 1)[1].split("s", 1)[0])
    return None


def measure_factor(
    factor: float, scale: str, seed: int, search_budget: float | None, work: Path
) -> dict[str, Any]:
    """Every process of one factor, in `work` (its data made fresh); the run's record."""
    raw, data = work / "raw", work / "data"
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    # a clean, local setting: no RECSYS_* / AWS_* of the caller, no .env (the processes run in
    # `work`), the lake under the factor's own data folder
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "AWS_"))}
    env |= {
        "RECSYS_DATA_DIR": str(data),
        "RECSYS_LAKE_URI": str(data / "lake"),
        "OPENBLAS_NUM_THREADS": "1",
    }
    train = ["train"] + ([] if search_budget is None else ["--search-budget", str(search_budget)])
    commands = {
        "generate": [
            *("generate", "--scale", scale, "--scale-factor", repr(factor)),
            *("--seed", str(seed), "--out", str(raw)),
        ],
        "ingest": ["ingest", "--raw-dir", str(raw)],
        "build": ["build"],
        "train": train,
        "evaluate": ["evaluate"],
        "publish": ["publish", "--force"],
    }
    measured: dict[str, Measured] = {}
    for name, args in [*commands.items(), ("serve", [])]:
        print(f"== {name}", flush=True)
        if name == "serve":
            measured[name] = serve_until_ready(env, work)
        else:
            measured[name] = run_process(name, args, env, work)
        m = measured[name]
        print(f"   {m.seconds:.1f} s, peak RSS {m.peak_gb:.2f} GB", flush=True)
        if name == "generate":
            print(f"   {_generated_counts(m.log)['events']:,} events", flush=True)

    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        m = measured[stage.process]
        if stage.start is None or stage.end is None:
            stages[stage.name] = {"seconds": m.seconds, "peak_gb": m.peak_gb}
        else:
            try:
                t0, t1 = step_window(m.trace.lines, stage.start, stage.end)
            except ValueError as exc:
                raise SystemExit(f"{stage.name}: {exc} in {m.log}") from None
            stages[stage.name] = {
                "seconds": t1 - t0,
                "peak_gb": window_peak(m.trace.samples, t0, t1),
                "rss_at_start_gb": value_at(m.trace.samples, t0),
            }
        stages[stage.name]["measured_as"] = stage.measured_as
    training = json.loads((data / "models" / "training.json").read_text())
    latest = (data / "lake" / "snapshots" / "LATEST").read_text().strip()
    snapshot = data / "lake" / "snapshots" / latest / "snapshot.duckdb"
    counts = _generated_counts(measured["generate"].log)
    return {
        "factor": factor,
        "events": int(counts["events"]),
        "visitors": int(counts["visitors"]),
        "items": int(counts["items_with_properties"]),
        "work_dir": str(work),
        "processes": {
            name: {"seconds": m.seconds, "peak_gb": m.peak_gb} for name, m in measured.items()
        },
        "stages": stages,
        "pipeline": {
            "seconds": sum(measured[p].seconds for p in PIPELINE),
            "peak_gb": max(measured[p].peak_gb for p in PIPELINE),
        },
        "details": {
            "als_fit_seconds": training["als"]["fit_seconds"],
            "als_fitted_nnz": training["als"]["fitted_nnz"],
            "als_step_seconds_reported": training["als"]["seconds"],
            "ranker_seconds": training["ranker"]["seconds"],
            "ranker_trials": training["ranker"]["n_trials"],
            "snapshot_mb": snapshot.stat().st_size / 1e6,
            "api_load_seconds": _api_load_seconds(measured["serve"].log),
            "data_gb": _folder_bytes(data) / GB,
            "raw_gb": _folder_bytes(raw) / GB,
        },
    }


def _factor(text: str) -> float:
    from recsys.generate import check_scale_factor

    try:
        return check_scale_factor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full", choices=["tiny", "small", "full"])
    parser.add_argument(
        "--factors",
        nargs="+",
        type=_factor,
        default=list(DEFAULT_FACTORS),
        help="scale factors to measure (default: 0.25 0.5 1 2)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--search-budget", type=float, help="seconds of ranker search (default: recsys train's)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help="a folder per factor under it (default data/bench/scale)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=RESULTS_DIR,
        help="results.json and scale.png (default reports/bench_scale)",
    )
    parser.add_argument(
        "--docs-plot",
        type=Path,
        default=DOCS_PLOT,
        help="where the plot is copied for the docs (default docs/bench_scale.png)",
    )
    parser.add_argument("--no-docs-plot", action="store_true", help="do not copy the plot")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="render the tables and the plot again from a results.json, without running",
    )
    args = parser.parse_args()
    args.work_dir, args.out_dir = args.work_dir.resolve(), args.out_dir.resolve()
    docs_plot = None if args.no_docs_plot else args.docs_plot.resolve()

    if args.from_json:
        publish_results(summarise(json.loads(args.from_json.read_text())), args.out_dir, docs_plot)
        return 0

    from recsys.settings import DEFAULT_SEARCH_BUDGET_S

    factors = sorted(set(args.factors))
    meta = {
        "scale": args.scale,
        "factors": factors,
        "seed": args.seed,
        "search_budget_s": (
            DEFAULT_SEARCH_BUDGET_S if args.search_budget is None else args.search_budget
        ),
        "cores": os.cpu_count(),
        "ram_gb": psutil.virtual_memory().total / GB,
        "usable_gb": USABLE_GB,
        "time_budget_s": TIME_BUDGET_S,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(
        f"scaling benchmark: {args.scale} x {', '.join(f'{f:g}' for f in factors)} in "
        f"{args.work_dir} ({meta['cores']} cores, {meta['ram_gb']:.1f} GB)"
    )
    results: dict[str, Any] = {"meta": meta, "runs": []}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, factor in enumerate(factors, 1):
        work = args.work_dir / f"{args.scale}-x{factor:g}"
        print(f"\n[{i}/{len(factors)}] factor {factor:g} in {work}", flush=True)
        run = measure_factor(factor, args.scale, args.seed, args.search_budget, work)
        results["runs"].append(run)
        for stage, row in run["stages"].items():
            print(f"   {stage:<16} {row['seconds']:>8.1f} s {row['peak_gb']:>7.2f} GB")
        # written after every factor: a stopped run keeps what it measured
        (args.out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    results["meta"]["seconds"] = time.perf_counter() - t0
    publish_results(summarise(results), args.out_dir, docs_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
