"""Which snapshot is served: load `LATEST` from the lake, and swap in newer ones atomically.

`refresh()` (at start-up, then from a background task every `RECSYS_API_POLL_SECONDS`):

1. read `snapshots/LATEST` and the manifest of the version it names;
2. copy `snapshot.duckdb` into the local cache (`RECSYS_API_CACHE_DIR/<version>/`, kept across
   restarts: a cached copy whose sha256 matches is not downloaded again; from a local lake on
   the same file system, a hard link rather than a copy: a published file is never rewritten,
   and its bytes are trusted no more for being copied, since the manifest that vouches for them
   lies on the same lake), verify the sha256
   against the manifest, then the tables, columns, row counts, metadata and ranker
   (`api.loader.load`), and warm it (one answer of each kind). A verified copy is recorded
   beside it (`snapshot.sha256`: digest, size and modification time), so that it is not hashed
   again while unchanged, and so that a version whose file has the same sha256 as a cached one
   (the same snapshot published again, a roll-back) is a hard link to it, not a download;
3. only then replace `current`: one reference assignment, atomic under the GIL. A request
   reads `current` once and keeps that object, so requests in flight finish on the old
   snapshot, which is freed when the last of them ends.

A broken or half-written snapshot (no manifest, a wrong checksum, a missing table, a model that
does not load) is refused: logged, counted in `recsys_snapshot_swap_failures_total{reason}`,
and remembered with its manifest so that it is not retried on every poll (a re-published
manifest is tried again). A lake that cannot be reached is retried on the next poll. Either
way, the old snapshot keeps serving.

The service follows `LATEST` wherever it points, also backwards: moving `LATEST` to an older
version is how a bad model is rolled back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from api import load_worker, recommend
from api.loader import PARTS, load
from api.memory import release_memory
from api.metrics import Metrics
from api.snapshot import Snapshot, SnapshotInvalid
from recsys.atomic import write_atomic
from recsys.lake import Lake, LakeError
from recsys.snapshots import InvalidVersion, check_version, latest_version, sha256_file, shown

log = logging.getLogger("api.snapshots")
# A snapshot file from this size is loaded with a worker process (`api.load_worker`): at
# start-up the visitors' part in the worker while this process loads the rest (both cores,
# nothing is served yet); in a swap every part in the worker, at a lower CPU priority, so that
# the load never holds the GIL the requests need. Starting a worker costs ~0.3 s, more than a
# smaller snapshot takes to load here.
WORKER_FROM_BYTES = 32 << 20
START_AWAY = ("visitors",)
SWAP_NICE = 10
RETIRE_WAIT_S = 1.0  # how long a swap waits for requests to let go of the old snapshot
KEEP_CACHED = 2  # local copies kept: the served one and the one before (a quick roll-back)
DIGEST_FILE = "snapshot.sha256"  # beside a verified copy: "<sha256> <size> <mtime_ns>"


# what clients are told (readiness, 503s) for each reason a snapshot is not served
PUBLIC_REASONS = {
    "unpublished": "no snapshot published yet",
    "lake": "the lake cannot be read",
    "version": "snapshots/LATEST does not name a valid version",
    "manifest": "the latest snapshot's manifest is missing or invalid",
    "download": "the latest snapshot cannot be downloaded",
    "checksum": "the latest snapshot's checksum does not match its manifest",
    "invalid": "the latest snapshot is invalid",
    "error": "the latest snapshot could not be loaded",
}


class Refused(RuntimeError):
    """A snapshot was not swapped in; `reason` is the metric label, `permanent` whether to retry."""

    def __init__(self, reason: str, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.permanent = permanent


class SnapshotStore:
    """Holds the served snapshot; `refresh` loads a newer one. See the module doc."""

    def __init__(self, lake: Lake, cache_dir: Path, metrics: Metrics, cache_bytes: int = 0) -> None:
        self.lake = lake
        self.cache_dir = cache_dir
        self.metrics = metrics
        self.cache_bytes = cache_bytes
        self.current: Snapshot | None = None
        self.last_error: str | None = None  # for the logs: may name lake paths
        self.last_reason: str | None = None  # the Refused reason of last_error, for clients
        self._refused: set[tuple[str, str]] = set()  # (version, manifest digest)
        self._lock = threading.Lock()  # one refresh at a time
        metrics.track_snapshot_age(self._cutoff_epoch)

    @property
    def public_error(self) -> str | None:
        """Why no snapshot is served, in words a client may see: no paths, hosts or versions
        (those are in the log, for the operator)."""
        if self.last_error is None:
            return None
        return PUBLIC_REASONS.get(self.last_reason or "", "the latest snapshot was not loaded")

    def _cutoff_epoch(self) -> float | None:
        current = self.current
        return None if current is None else current.cutoff_epoch

    def refresh(self) -> bool:
        """Load the version `LATEST` names if it is not the one served; True if swapped."""
        with self._lock:
            try:
                return self._refresh()
            except Refused as exc:
                self._failed(exc.reason, str(exc))
            except Exception as exc:  # a bug, or the machine (memory): tried again next poll
                log.exception("loading a snapshot failed")
                self._failed("error", f"{type(exc).__name__}: {exc}")
            return False

    def _failed(self, reason: str, message: str) -> None:
        self.metrics.swap_failures.labels(reason).inc()
        # the same problem on every poll is logged once, and counted every time
        level = logging.DEBUG if message == self.last_error else logging.ERROR
        log.log(level, "snapshot not swapped in (%s): %s", reason, message)
        self.last_error = message
        self.last_reason = reason

    def _refresh(self) -> bool:
        try:
            version = latest_version(self.lake)
        except InvalidVersion as exc:  # not permanent: LATEST may be corrected in place
            raise Refused("version", f"snapshots/LATEST: {exc}", False) from exc
        except (LakeError, OSError) as exc:
            raise Refused("lake", f"cannot read snapshots/LATEST: {exc}", False) from exc
        if version is None:
            if self.current is None:
                self.last_error = f"no snapshot published yet ({self.lake.url('snapshots/LATEST')})"
                self.last_reason = "unpublished"
            return False
        current = self.current
        if current is not None and current.version == version:
            return False
        previous = current.version if current is not None else None
        manifest_text = self._manifest_text(version)
        signature = (version, hashlib.sha256(manifest_text.encode()).hexdigest())
        if signature in self._refused:
            return False
        t0 = time.perf_counter()
        phases: dict[str, float] = {}
        try:
            snapshot = self._load(version, manifest_text, phases)
        except Refused as exc:
            if exc.permanent:
                self._refused.add(signature)
            raise
        seconds = time.perf_counter() - t0
        self.current = snapshot  # the swap
        # Requests in flight may still hold the old snapshot. They end within milliseconds:
        # wait for them, so that it is freed here rather than by the last of them. Unmapping a
        # full-scale snapshot's arrays takes 70-180 ms, which a request answered on the event
        # loop would spend with every other request waiting behind it.
        deadline = time.monotonic() + RETIRE_WAIT_S
        while current is not None and time.monotonic() < deadline:
            if sys.getrefcount(current) <= 2:  # `current` and the call's argument
                break
            time.sleep(0.002)
        del current
        release_memory()
        self.last_error = self.last_reason = None
        self.metrics.swaps.inc()
        self.metrics.snapshot_loaded(
            {
                "version": snapshot.version,
                "model_version": snapshot.model_version,
                "feature_version": snapshot.feature_version,
                "cutoff_at": snapshot.cutoff_at.isoformat(sep=" "),
            },
            seconds,
        )
        log.info(
            "serving snapshot %s (model %s, features as of %s): %.1f MB in arrays, "
            "loaded in %.2fs (%s)%s",
            snapshot.version,
            snapshot.model_version,
            snapshot.cutoff_at,
            snapshot.nbytes / 1e6,
            seconds,
            ", ".join(f"{name} {spent:.2f}s" for name, spent in phases.items()),
            f", replacing {previous}" if previous else "",
        )
        self._prune_cache(keep=snapshot.version)
        return True

    def _manifest_text(self, version: str) -> str:
        rel = f"snapshots/{version}/manifest.json"
        try:
            return self.lake.read_text(rel)
        except FileNotFoundError as exc:
            raise Refused(
                "manifest", f"LATEST names {version}, which has no manifest.json", False
            ) from exc
        except (LakeError, OSError) as exc:
            raise Refused("lake", f"cannot read {rel}: {exc}", False) from exc

    def _load(self, version: str, manifest_text: str, phases: dict[str, float]) -> Snapshot:
        """Fetch, verify, load and warm `version`; the seconds of each step go to `phases`."""
        try:
            manifest: dict[str, Any] = json.loads(manifest_text)
            digest = str(manifest["sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused(
                "manifest", f"{version}: manifest.json is invalid: {shown(exc, 200)}", True
            ) from exc
        if manifest.get("version") != version:
            raise Refused(
                "manifest",
                f"{version}: manifest.json names version {shown(manifest.get('version'))}",
                True,
            )
        t0 = time.perf_counter()
        local = self._fetch(version, digest)
        t1 = time.perf_counter()
        phases["fetch"] = t1 - t0
        try:
            if local.stat().st_size < WORKER_FROM_BYTES:
                snapshot = load(
                    local, manifest, cache_bytes=self.cache_bytes, files_dir=self.cache_dir
                )
            else:
                snapshot = load_worker.load(
                    local,
                    manifest,
                    self.cache_dir,
                    away=START_AWAY if self.current is None else PARTS,
                    cache_bytes=self.cache_bytes,
                    nice=0 if self.current is None else SWAP_NICE,
                )
            t2 = time.perf_counter()
            phases["load"] = t2 - t1
            warm(snapshot)
            phases["warm"] = time.perf_counter() - t2
        except SnapshotInvalid as exc:
            raise Refused("invalid", f"{version}: {exc}", True) from exc
        return snapshot

    def _fetch(self, version: str, digest: str) -> Path:
        """The verified local copy of the version's file, downloaded unless already cached."""
        target = self.cache_dir / check_version(version) / "snapshot.duckdb"
        if target.exists():
            if _verified(target, digest):
                return target
            if sha256_file(target) == digest:
                _record(target, digest)
                return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own: several workers may fetch the same version at once
        partial = target.with_name(f".snapshot.duckdb.{os.getpid()}.{uuid.uuid4().hex}.part")
        try:
            if self._link_cached(digest, partial):
                os.replace(partial, target)
                _record(target, digest)
                return target
            try:
                self.lake.link_or_get(f"snapshots/{version}/snapshot.duckdb", partial)
            except FileNotFoundError as exc:
                raise Refused("download", f"{version}: snapshot.duckdb is missing", True) from exc
            except (LakeError, OSError) as exc:
                raise Refused("download", f"{version}: download failed: {exc}", False) from exc
            actual = sha256_file(partial)
            if actual != digest:
                raise Refused(
                    "checksum",
                    f"{version}: sha256 {actual[:12]}... differs from the manifest's "
                    f"{digest[:12]}... (a broken or half-written file)",
                    True,
                )
            os.replace(partial, target)
            _record(target, digest)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def _link_cached(self, digest: str, link: Path) -> bool:
        """Hard-link `link` to a cached copy verified to have `digest`; False if there is none
        (or the file system cannot link)."""
        if not self.cache_dir.is_dir():
            return False
        for path in self.cache_dir.glob(f"*/{DIGEST_FILE}"):
            copy = path.with_name("snapshot.duckdb")
            if _verified(copy, digest):
                try:
                    os.link(copy, link)
                except OSError:
                    return False
                return True
        return False

    def _prune_cache(self, keep: str) -> None:
        """Delete cached versions older than the newest KEEP_CACHED (never `keep`)."""
        if not self.cache_dir.is_dir():
            return
        versions = sorted(
            # not the loads' temporary folders (`.arrays-*`, api.loader.Keep)
            (p for p in self.cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
            reverse=True,
        )
        for path in versions[KEEP_CACHED:]:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)


def _verified(path: Path, digest: str) -> bool:
    """Whether `path` was verified to have `digest` and is unchanged since (see `_record`)."""
    try:
        recorded = (path.parent / DIGEST_FILE).read_text().split()
        stat = path.stat()
    except OSError:
        return False
    return recorded == [digest, str(stat.st_size), str(stat.st_mtime_ns)]


def _record(path: Path, digest: str) -> None:
    """Note that `path` has `digest`, with its size and modification time (written atomically:
    several workers may share the cache)."""
    stat = path.stat()
    write_atomic(path.parent / DIGEST_FILE, f"{digest} {stat.st_size} {stat.st_mtime_ns}\n")


def warm(snapshot: Snapshot) -> None:
    """One answer of each kind, so that the first request does not pay for first-use costs
    (CatBoost's model setup, NumPy's first calls). Any error here refuses the snapshot."""
    try:
        visitors = snapshot.recs.keys
        candidates = snapshot.candidates.keys
        visitor = int(visitors[0]) if len(visitors) else 0
        recommend.for_visitor(snapshot, visitor, 10)
        recommend.for_visitor(snapshot, -1, 10)
        ranked = int(candidates[0]) if len(candidates) else None
        recommend.for_session(snapshot, ranked, [], 10)
        similar = snapshot.similar.keys
        if len(similar):
            recommend.for_session(snapshot, None, [int(similar[0])], 10)
            recommend.similar_to(snapshot, int(similar[0]), 10)
        if len(snapshot.items.ids):
            recommend.for_session(snapshot, None, [int(snapshot.items.ids[0])], 10)
        recommend.for_visitor(snapshot, int(np.iinfo(np.int64).max), 10)
    except Exception as exc:
        raise SnapshotInvalid(f"warming up failed: {type(exc).__name__}: {exc}") from exc
