"""Snapshots: one DuckDB file the API serves from, published atomically to the lake.

Layout (DESIGN.md): `snapshots/<version>/snapshot.duckdb`, `snapshots/<version>/manifest.json`,
`snapshots/LATEST` (the version string). Publishing writes the file, reads it back to verify its
sha256, writes the manifest, and only then replaces `LATEST`: a failure at any point leaves
`LATEST` (and the snapshot it names) untouched. The last `KEEP` snapshots are kept.

Quality gate: a snapshot is refused when `als_catboost` NDCG@10 is below `popularity`'s, or more
than 5% below the last published snapshot's; `force=True` overrides and the manifest says so.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from recsys.lake import Lake

KEEP = 5
GATE_METRIC = "ndcg@10"
MAX_DROP = 0.05
SNAPSHOT_TABLES = (
    "metadata",
    "items",
    "visitors",
    "interactions",
    "visitor_category_affinities",
    "recommendations",
    "candidates",
    "similar_items",
    "popular_items",
    "ranker",
)


class GateRefused(RuntimeError):
    """The new model is worse than the baseline or than the published one."""


@dataclass(frozen=True)
class Published:
    version: str
    manifest: dict[str, Any]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def latest_version(lake: Lake) -> str | None:
    if not lake.exists("snapshots/LATEST"):
        return None
    return lake.read_text("snapshots/LATEST").strip() or None


def latest_manifest(lake: Lake) -> dict[str, Any] | None:
    version = latest_version(lake)
    if version is None or not lake.exists(f"snapshots/{version}/manifest.json"):
        return None
    return dict(json.loads(lake.read_text(f"snapshots/{version}/manifest.json")))


def gate(metrics: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    """Reasons to refuse the new snapshot (empty: it may be published)."""
    models = metrics.get("models", {})
    new = models.get("als_catboost", {}).get(GATE_METRIC)
    baseline = models.get("popularity", {}).get(GATE_METRIC)
    reasons = []
    if new is None or baseline is None:
        reasons.append(f"metrics lack {GATE_METRIC} for als_catboost or popularity")
        return reasons
    if new < baseline:
        reasons.append(f"als_catboost {GATE_METRIC} {new:.4f} is below popularity's {baseline:.4f}")
    if previous:
        old = previous.get("metrics", {}).get("models", {}).get("als_catboost", {})
        old_value = old.get(GATE_METRIC)
        if old_value is not None and new < (1 - MAX_DROP) * old_value:
            reasons.append(
                f"als_catboost {GATE_METRIC} {new:.4f} is more than {MAX_DROP:.0%} below the "
                f"published snapshot {previous.get('version')}'s {old_value:.4f}"
            )
    return reasons


def verify_snapshot(path: Path) -> dict[str, int]:
    """Open the file read-only, check every table is there; return the row counts."""
    with duckdb.connect(str(path), read_only=True) as con:
        present = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
        missing = [t for t in SNAPSHOT_TABLES if t not in present]
        if missing:
            raise ValueError(f"snapshot {path} lacks tables: {', '.join(missing)}")
        counts = {}
        for table in SNAPSHOT_TABLES:
            row = con.execute(f"select count(*) from {table}").fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts


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
        "gate": {"passed": not reasons, "reasons": reasons, "metric": GATE_METRIC},
        "previous_version": previous.get("version") if previous else None,
    }
    base = f"snapshots/{version}"
    lake.put(snapshot_path, f"{base}/snapshot.duckdb")
    # read it back: what the lake holds must be what we built
    with tempfile.TemporaryDirectory() as tmp:
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
    current = latest_version(lake)
    versions = sorted(
        {p.split("/")[1] for p in lake.glob("snapshots/*/manifest.json")}, reverse=True
    )
    doomed = [v for v in versions[keep:] if v != current]
    for version in doomed:
        lake.remove(f"snapshots/{version}")
    return doomed
