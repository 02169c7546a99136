"""`recsys gc`: remove what killed runs left behind, and nothing that a running one may need.

A run killed at the wrong moment (`kill -9`, a lost node) leaves:

- snapshot folders without a `manifest.json` (the file was put, the manifest never came):
  retention (`models_ml.publish.prune`) counts manifests, so it never saw them;
- hidden temporary files of the lake's atomic writes (`.<name>.<random>` beside their target,
  `.<name>.<hex>.tmp` of the API's landing) in `raw/`, `snapshots/`, `landing/events/` and
  `features/`, and the `tmp_<mart>.parquet` of a feature export killed before its rename;
- scratch folders named `recsys-*` under the system's temporary directory (ingest's staging, a
  publish's read-back copy).

Only what is older than `grace` is removed (one hour by default): a run in progress writes
exactly these things, and a run younger than that may still be writing them. On S3 the lake
has no temporary files (each write is one PUT), so only its snapshot folders are looked at.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from recsys.lake import TEMP_PREFIX, Lake

GRACE_SECONDS = 3600.0
# what the project's atomic writes name their temporary files (recsys.lake.Lake.put,
# api.events.land, the API's snapshot cache)
TEMP_FILE = re.compile(r"^\.(.+\.[A-Za-z0-9_]{6,}|.+\.tmp|.+\.part)$")
EXPORT_TEMP_FILE = re.compile(r"^tmp_.+\.parquet$")  # DuckDB's COPY ... (use_tmp_file true)
VERSION_TIME = re.compile(r"^([0-9]{8}T[0-9]{6})")
LAKE_FOLDERS = ("raw", "snapshots", "landing/events", "features")


@dataclass
class Collected:
    snapshot_folders: list[str] = field(default_factory=list)
    temporary_files: list[str] = field(default_factory=list)
    scratch_folders: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.snapshot_folders) + len(self.temporary_files) + len(self.scratch_folders)


def collect(
    lake: Lake,
    grace_seconds: float = GRACE_SECONDS,
    now: float | None = None,
    temp_dir: Path | None = None,
) -> Collected:
    """Remove what killed runs left (see the module doc); what was removed."""
    now = time.time() if now is None else now
    cutoff = now - grace_seconds
    done = Collected()
    for version in _unfinished_snapshots(lake, cutoff):
        lake.remove(f"snapshots/{version}")
        done.snapshot_folders.append(f"snapshots/{version}")
    if not lake.is_s3:
        root = Path(lake.root)
        for folder in LAKE_FOLDERS:
            for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
                temporary = TEMP_FILE.match(path.name) or (
                    folder == "features" and EXPORT_TEMP_FILE.match(path.name)
                )
                if temporary and path.is_file() and _older(path, cutoff):
                    path.unlink(missing_ok=True)
                    done.temporary_files.append(str(path.relative_to(root)))
    scratch = Path(temp_dir or tempfile.gettempdir())
    for path in sorted(scratch.glob(f"{TEMP_PREFIX}*")):
        if path.is_dir() and not path.is_symlink() and _older(path, cutoff):
            shutil.rmtree(path, ignore_errors=True)
            done.scratch_folders.append(str(path))
    return done


def _unfinished_snapshots(lake: Lake, cutoff: float) -> list[str]:
    """Version folders without a manifest, published (by their name's time) before `cutoff`."""
    folders = {p.split("/")[1] for p in lake.glob("snapshots/*/*")}
    finished = {p.split("/")[1] for p in lake.glob("snapshots/*/manifest.json")}
    unfinished = []
    for version in sorted(folders - finished):
        stamp = VERSION_TIME.match(version)
        if stamp is None:
            continue  # not a folder the publisher names: not ours to delete
        written = datetime.strptime(stamp.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        if written.timestamp() < cutoff:
            unfinished.append(version)
    return unfinished


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False
