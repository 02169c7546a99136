"""The human monitoring report: one self-contained HTML page (its plots inlined) and the plots
as PNG files beside it, from monitoring.json's content (monitoring/run.py)."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"ok": "#4c9a2a", "warn": "#e0a800", "fail": "#c0392b", None: "#999999"}
PLOTS = ("monitoring_drift.png", "monitoring_live.png", "monitoring_volume.png")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def plot_drift(report: dict[str, Any], path: Path) -> None:
    drift = report["drift"]
    rows = [(name, f.get("psi"), f.get("status")) for name, f in drift["features"].items()]
    for name in ("event_mix", "categories"):
        if drift.get(name):
            rows.append((name, drift[name].get("psi"), drift[name].get("status")))
    rows = [r for r in rows if r[1] is not None]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.25 * len(rows) + 1)))
    if rows:
        rows.sort(key=lambda r: r[1])
        values = [r[1] for r in rows]
        ax.barh([r[0] for r in rows], values, color=[COLOURS[r[2]] for r in rows])
        top = max(0.3, max(values) * 1.15)
        for i, value in enumerate(values):
            ax.text(min(value, top) + top * 0.01, i, f"{value:.3f}", va="center", fontsize=7)
        for limit, style in ((0.1, ":"), (0.25, "--")):  # the vars' defaults, before sample size
            ax.axvline(limit, color="grey", linestyle=style, linewidth=1)
        ax.set_xlim(0, top * 1.1)
        ax.set_xlabel("PSI (colour: status by the sample-size-aware limits; lines: 0.1, 0.25)")
    else:
        ax.text(0.5, 0.5, "no reference: drift not measured", ha="center", va="center")
        ax.set_axis_off()
    ref = report["reference"].get("feature_version")
    ax.set_title(f"Drift: {ref or '-'} -> {report['current'].get('feature_version') or '-'}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_live(report: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    by_version: dict[str, list[tuple[int, float]]] = {}
    for row in report["live_performance"]:
        if row.get("ndcg@10") is not None:
            by_version.setdefault(row["snapshot_version"], []).append((row["day"], row["ndcg@10"]))
    for version, points in sorted(by_version.items())[-8:]:  # the newest snapshots
        points.sort()
        line = ax.plot(
            [p[0] for p in points], [p[1] for p in points], marker="o", label=f"{version} live"
        )
        offline = (report.get("offline") or {}).get(version, {}).get("ndcg@10")
        if offline is not None:
            ax.axhline(offline, color=line[0].get_color(), linestyle="--", linewidth=1)
    if by_version:
        ax.set_xlabel("days since the snapshot's cutoff")
        ax.set_ylabel("NDCG@10 (dashed: offline)")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no events after a published snapshot's cutoff yet", ha="center")
        ax.set_axis_off()
    ax.set_title("Live performance of the published lists")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_volume(volume: Iterable[dict[str, Any]], path: Path) -> None:
    rows = sorted(volume, key=lambda r: str(r["hour_start_at"]))
    fig, ax = plt.subplots(figsize=(8, 3))
    if rows:
        xs = list(range(len(rows)))
        ax.bar(xs, [r["n_events"] for r in rows], color=[COLOURS.get(r["status"]) for r in rows])
        ax.plot(
            xs, [r["baseline_mean"] for r in rows], color="black", label="same hour, earlier weeks"
        )
        ax.set_xticks(xs[:: max(1, len(xs) // 8)])
        ax.set_xticklabels(
            [str(rows[i]["hour_start_at"])[5:16] for i in xs[:: max(1, len(xs) // 8)]]
        )
        ax.set_ylabel("events per hour")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no events", ha="center")
        ax.set_axis_off()
    ax.set_title("Hourly event volume")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def render_html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    retrain = report.get("retrain") or {}
    decision = "retrain" if retrain.get("decision") else "no retrain"
    reasons = retrain.get("details") or retrain.get("held_details") or []
    drift = report["drift"]
    features = [
        [name, f.get("kind"), f.get("psi"), f.get("ks"), f.get("status")]
        for name, f in sorted(drift["features"].items())
    ]
    fresh = report.get("freshness") or {}
    business = report.get("business") or {}
    live = report["live_performance"][-14:]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>recsys monitoring</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
        "text-align:right}</style></head><body>",
        f"<h1>Monitoring, {_fmt(report.get('generated_at'))}</h1>",
        f"<p><b>Decision: {decision}</b>"
        + ("".join(f"<br>{html.escape(str(r))}" for r in reasons))
        + "</p>",
        "<h2>Drift</h2>",
        f"<p>reference {_fmt(report['reference'].get('feature_version'))} (snapshot "
        f"{_fmt(report['reference'].get('snapshot_version'))}), current "
        f"{_fmt(report['current'].get('feature_version'))}: <b>{_fmt(drift.get('status'))}</b>"
        "</p>",
    ]
    for name in PLOTS:
        if name in images:
            data = base64.b64encode(images[name]).decode("ascii")
            parts.append(f"<img alt='{name}' src='data:image/png;base64,{data}'>")
            if name == PLOTS[0]:
                parts.append(_table(["feature", "kind", "PSI", "KS", "status"], features))
                parts.append("<h2>Live performance</h2>")
            elif name == PLOTS[1]:
                parts.append(
                    _table(
                        ["snapshot", "day", "NDCG@10", "recall@20", "visitors"],
                        [
                            [
                                r["snapshot_version"],
                                r["day"],
                                r["ndcg@10"],
                                r["recall@20"],
                                r["n_visitors"],
                            ]
                            for r in live
                        ],
                    )
                )
                parts.append("<h2>Freshness and volume</h2>")
    parts.append(
        _table(
            ["events lag (h)", "events", "snapshot age (h)", "volume ratio", "volume"],
            [
                [
                    (fresh.get("events_lag_seconds") or 0) / 3600
                    if fresh.get("events_lag_seconds") is not None
                    else None,
                    fresh.get("events_status"),
                    (fresh.get("snapshot_age_seconds") or 0) / 3600
                    if fresh.get("snapshot_age_seconds") is not None
                    else None,
                    (report.get("volume") or {}).get("ratio"),
                    (report.get("volume") or {}).get("status"),
                ]
            ],
        )
    )
    parts.append("<h2>Business (last day)</h2>")
    parts.append(
        _table(
            ["day", "CTR", "conversion", "revenue"],
            [
                [
                    business.get("day"),
                    business.get("ctr"),
                    business.get("conversion_rate"),
                    business.get("revenue"),
                ]
            ],
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    report: dict[str, Any], out: Path, volume: Iterable[dict[str, Any]] = ()
) -> dict[str, Path]:
    """The plots and `report.html` in `out`; {file name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    plot_drift(report, out / PLOTS[0])
    plot_live(report, out / PLOTS[1])
    plot_volume(volume, out / PLOTS[2])
    images = {name: (out / name).read_bytes() for name in PLOTS}
    page = out / "report.html"
    page.write_text(render_html(report, images), encoding="utf-8")
    return {"report.html": page, **{name: out / name for name in PLOTS}}
