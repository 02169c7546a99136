"""Snapshots: one DuckDB file the API serves from, published atomically to the lake.

Layout (DESIGN.md): `snapshots/<version>/snapshot.duckdb`, `snapshots/<version>/manifest.json`,
`snapshots/LATEST` (the version string). Publishing writes the file, reads it back to verify its
sha256, writes the manifest, and only then replaces `LATEST`: a failure at any point leaves
`LATEST` (and the snapshot it names) untouched. The last `KEEP` snapshots are kept.

Quality gate: a snapshot is refused when `als_catboost` NDCG@10 is below `popularity`'s, or more
than 5% below the last published snapshot's; `force=True` overrides and the manifest says so.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.errors import GateRefused
from recsys.lake import TEMP_PREFIX, Lake
from recsys.snapshots import (
    VERSION_PATTERN,
    InvalidVersion,
    latest_manifest,
    latest_version,
    sha256_file,
    verify_snapshot,
)

KEEP = 5
GATE_METRIC = "ndcg@10"
# the plain baselines a user would try first (models_ml.evaluation): the ranker must beat the
# best of them
GATE_BASELINES = ("popularity", "popularity_unseen", "als_unseen")
MAX_DROP = 0.05


@dataclass(frozen=True)
class Published:
    version: str
    manifest: dict[str, Any]


def gate(metrics: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    """Reasons to refuse the new snapshot (empty: it may be published): als_catboost below the
    best plain baseline (GATE_BASELINES, those the metrics have), or more than MAX_DROP below
    the published snapshot."""
    models = metrics.get("models", {})
    new = models.get("als_catboost", {}).get(GATE_METRIC)
    baselines = {
        name: models[name][GATE_METRIC]
        for name in GATE_BASELINES
        if GATE_METRIC in models.get(name, {})
    }
    reasons = []
    if new is None or not baselines:
        reasons.append(f"metrics lack {GATE_METRIC} for als_catboost or the baselines")
        return reasons
    best, baseline = max(baselines.items(), key=lambda kv: kv[1])
    if new < baseline:
        reasons.append(f"als_catboost {GATE_METRIC} {new:.4f} is below {best}'s {baseline:.4f}")
    if previous:
        old = previous.get("metrics", {}).get("models", {}).get("als_catboost", {})
        old_value = old.get(GATE_METRIC)
        if old_value is not None and new < (1 - MAX_DROP) * old_value:
            reasons.append(
                f"als_catboost {GATE_METRIC} {new:.4f} is more than {MAX_DROP:.0%} below the "
                f"published snapshot {previous.get('version')}'s {old_value:.4f}"
            )
    return reasons


def gate_notes(metrics: dict[str, Any]) -> list[str]:
    """What the gate's comparison with the best baseline is worth: a note when the paired 95%
    bootstrap interval of the difference (metrics.json `differences`) holds 0, i.e. the
    difference is inside the noise of the evaluated visitors."""
    models = metrics.get("models", {})
    baselines = [n for n in GATE_BASELINES if GATE_METRIC in models.get(n, {})]
    if not baselines or GATE_METRIC not in models.get("als_catboost", {}):
        return []
    best = max(baselines, key=lambda n: models[n][GATE_METRIC])
    interval = metrics.get("differences", {}).get(f"als_catboost - {best}", {}).get(GATE_METRIC)
    if not interval:
        return []
    low, high = interval
    n = metrics.get("protocol", {}).get("n_eval_visitors")
    if low <= 0 <= high:
        return [
            f"als_catboost - {best} {GATE_METRIC} is inside the noise: 95% interval "
            f"[{low:+.4f}, {high:+.4f}] over {n} visitors holds 0"
        ]
    side = "above" if low > 0 else "below"
    return [
        f"als_catboost is {side} {best} beyond the noise: {GATE_METRIC} difference 95% "
        f"interval [{low:+.4f}, {high:+.4f}] over {n} visitors"
    ]


def publish(
    lake: Lake,
    snapshot_path: Path,
    manifest: dict[str, Any],
    *,
    force: bool = False,
    now: datetime | None = None,
) -> Published:
    """Publish a built snapshot file, through the gate, atomically. See the module doc."""
    previous = latest_manifest(lake)
    reasons = gate(manifest.get("metrics", {}), previous)
    if reasons and not force:
        raise GateRefused("; ".join(reasons))
    counts = verify_snapshot(snapshot_path)
    digest = sha256_file(snapshot_path)
    created = (now or datetime.now(UTC)).replace(microsecond=0)
    version = f"{created:%Y%m%dT%H%M%SZ}-{digest[:8]}"
    manifest = {
        **manifest,
        "version": version,
        "created_at": created.isoformat(),
        "row_counts": counts,
        "sha256": digest,
        "size_bytes": snapshot_path.stat().st_size,
        "forced": bool(force and reasons),
        "gate": {
            "passed": not reasons,
            "reasons": reasons,
            "notes": gate_notes(manifest.get("metrics", {})),
            "metric": GATE_METRIC,
            "baselines": list(GATE_BASELINES),
        },
        "previous_version": previous.get("version") if previous else None,
    }
    base = f"snapshots/{version}"
    lake.put(snapshot_path, f"{base}/snapshot.duckdb")
    # read it back: what the lake holds must be what we built
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        copy = Path(tmp) / "snapshot.duckdb"
        lake.get(f"{base}/snapshot.duckdb", copy)
        if sha256_file(copy) != digest:
            lake.remove(base)
            raise RuntimeError(f"snapshot {version} changed on the way to the lake; not published")
    lake.write_text(f"{base}/manifest.json", json.dumps(manifest, indent=2, default=str))
    lake.write_text("snapshots/LATEST", version + "\n")  # last: readers switch only now
    prune(lake, keep=KEEP)
    return Published(version=version, manifest=manifest)


def prune(lake: Lake, keep: int = KEEP) -> list[str]:
    """Delete all but the newest `keep` snapshots (never the one LATEST names)."""
    try:
        current = latest_version(lake)
    except InvalidVersion:
        current = None
    listed = {p.split("/")[1] for p in lake.glob("snapshots/*/manifest.json")}
    # only the publisher's names: a folder named otherwise is not ours to delete
    versions = sorted((v for v in listed if VERSION_PATTERN.fullmatch(v)), reverse=True)
    doomed = [v for v in versions[keep:] if v != current]
    for version in doomed:
        lake.remove(f"snapshots/{version}")
    return doomed
