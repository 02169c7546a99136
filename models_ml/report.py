"""The human report: `reports/report.md` with plots beside it (metric bars, feature importance,
calibration curve), from `reports/metrics.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

MODELS = ("popularity", "popularity_unseen", "als_unseen", "als", "als_catboost")
WITH_INTERVALS = ("ndcg@10", "recall@20", "hit_rate@10")
SHOWN = ("precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "mrr@10", "ndcg@20")


def metric_table(metrics: dict[str, Any]) -> str:
    """The models' metrics as a fixed-width table (what `recsys evaluate` prints)."""
    models = metrics["models"]
    names = [m for m in MODELS if m in models]
    columns = [c for c in (*SHOWN, "recall@20", "coverage@10") if c in models[names[0]]]
    head = f"{'model':<18}" + "".join(f"{c:>13}" for c in columns)
    rows = [head, "-" * len(head)]
    for name in names:
        rows.append(f"{name:<18}" + "".join(f"{models[name][c]:>13.4f}" for c in columns))
    protocol = metrics["protocol"]
    rows.append(
        f"evaluated on {protocol['n_eval_visitors']:,} visitors known at t2 with events in "
        f"(t2, end] ({protocol['n_test_window_visitors']:,} visitors active in that window)"
    )
    intervals = metrics.get("intervals", {})
    if intervals:
        shown = [c for c in WITH_INTERVALS if c in intervals.get(names[0], {})]
        rows.append("95% bootstrap intervals over those visitors:")
        for name in names:
            cells = [
                f"{c} [{intervals[name][c][0]:.4f}, {intervals[name][c][1]:.4f}]" for c in shown
            ]
            rows.append(f"  {name:<18}" + "  ".join(cells))
        for pair, values in metrics.get("differences", {}).items():
            if "ndcg@10" in values:
                low, high = values["ndcg@10"]
                rows.append(f"  {pair:<34} ndcg@10 difference [{low:+.4f}, {high:+.4f}]")
    pool = metrics.get("pool", {})
    if pool.get("n_visitors"):
        by = pool["recall_by_source"]
        sizes = pool.get("mean_pool_size_by_source", {})
        rows.append(
            f"candidate pool: recall {pool['recall']:.4f} ("
            + ", ".join(f"{name} {value:.4f}" for name, value in by.items())
            + f"), {pool['mean_pool_size']:.1f} items a visitor ("
            + ", ".join(f"{name} {value:.1f}" for name, value in sizes.items())
            + f"); re-visit rate of the shop {pool['revisit_rate']:.3f}"
        )
    session = metrics.get("session", {})
    if session:
        rows.append(
            f"session next-item: HR@20 {session.get('hit_rate@20', 0):.4f}, "
            f"MRR@20 {session.get('mrr@20', 0):.4f} over {session.get('n_steps', 0):,} steps"
        )
    conformal = metrics.get("conformal", {})
    if conformal:

        def share(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        before = conformal.get("training_window", {})
        rows.append(
            f"conformal: nominal coverage {conformal['nominal']:.3f}, empirical "
            f"{share(conformal['empirical_coverage'])} on {conformal['n_groups']:,} test "
            f"visitors (prediction set: top {conformal['prediction_set_size']}, calibrated on "
            f"{conformal.get('n_calibration', 0):,} others of the test window)"
            + (
                f"; calibrated on the training window instead: "
                f"{share(before.get('empirical_coverage'))} (top "
                f"{before.get('prediction_set_size')})"
                if before
                else ""
            )
        )
    return "\n".join(rows)


def _metric_bars(metrics: dict[str, Any], path: Path) -> None:
    models = metrics["models"]
    names = [m for m in MODELS if m in models]
    shown = [c for c in SHOWN if c in models[names[0]]]
    x = np.arange(len(shown))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, name in enumerate(names):
        ax.bar(x + i * width, [models[name][c] for c in shown], width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, shown)
    ax.set_ylabel("value on the test window")
    ax.set_title("Ranking metrics by model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _calibration_curve(curve: dict[str, list[float]], nominal: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["rank"], curve["calibrated"], label="calibrated confidence (calibration set)")
    ax.plot(curve["rank"], curve["empirical"], label="observed on the test window", ls="--")
    ax.axhline(nominal, color="grey", lw=0.8, ls=":", label=f"nominal {nominal:.2f}")
    ax.set_xlabel("rank of the recommendation")
    ax.set_ylabel("P(a relevant item is at or above this rank)")
    ax.set_title("Conformal calibration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(
    reports_dir: Path, metrics: dict[str, Any], calibration_curve: dict[str, list[float]] | None
) -> Path:
    """Write report.md and its plots into `reports_dir`; return the report's path."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    _metric_bars(metrics, reports_dir / "metrics.png")
    parts = [
        "# Evaluation report",
        "",
        "Three windows (DESIGN.md): features and ALS as of t1, labels for the ranker in (t1, t2],",
        "features and ALS recomputed as of t2, tested on (t2, end].",
        "",
        "```",
        metric_table(metrics),
        "```",
        "",
        "![metrics by model](metrics.png)",
        "",
    ]
    if (reports_dir / "feature_importance.png").exists():
        parts += [
            "## Ranker feature importance",
            "",
            "![feature importance](feature_importance.png)",
            "",
        ]
    if calibration_curve:
        _calibration_curve(
            calibration_curve, metrics["conformal"]["nominal"], reports_dir / "calibration.png"
        )
        parts += ["## Conformal calibration", "", "![calibration curve](calibration.png)", ""]
    protocol = metrics["protocol"]
    parts += [
        "## Protocol",
        "",
        f"- t1 {protocol['t1']}, t2 {protocol['t2']}, end {protocol['end']}",
        f"- evaluated visitors: {protocol['n_eval_visitors']:,}",
        f"- relevant items: {protocol['relevant']}",
        f"- feature version {protocol['feature_version']}, dbt invocation "
        f"{protocol['dbt_invocation_id']}",
        "",
    ]
    path = reports_dir / "report.md"
    path.write_text("\n".join(parts))
    return path
