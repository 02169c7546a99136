"""Prometheus metrics of the service, on a registry of its own.

Each app gets a fresh `CollectorRegistry` (tests build many apps in one process, and the global
registry would refuse the second set of names). `/metrics` renders it with `generate_latest`.

With several uvicorn workers (`recsys serve --workers N`), the counters and histograms of every
worker are shared through prometheus_client's multiprocess mode: `recsys serve` gives the
workers a fresh folder in PROMETHEUS_MULTIPROC_DIR, each worker's values live in files there,
and one scrape of any worker sums them all (`MultiProcessCollector`). What describes the
snapshot (its version, age and load time) and the process (memory, CPU) are the scraped
worker's own: every worker serves the same snapshot once it has polled. With one worker the
registry is the in-process one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # set by `recsys serve --workers N`, N > 1

# request latencies are milliseconds on the hot path: resolve them, and still see a slow tail
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# (route, strategy) pairs that exist: GET / POST recommendations, similar items
ANSWERS = (
    ("visitor", "personalized"),
    ("visitor", "session"),
    ("visitor", "popular"),
    ("session", "personalized"),
    ("session", "session"),
    ("session", "popular"),
    ("similar", "similar"),
    ("similar", "popular"),
)
SWAP_FAILURE_REASONS = (
    "lake",
    "version",
    "manifest",
    "download",
    "checksum",
    "invalid",
    "error",
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CACHES = ("recommendations", "similar")


class Metrics:
    """Every metric the service exports; one instance per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "recsys_http_request_duration_seconds",
            "Time from request to the end of the response, by route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.recommendations = Counter(
            "recsys_recommendations",
            "Answers given, by kind of request (visitor: GET, session: POST, similar) and "
            "strategy.",
            ["route", "strategy"],
            registry=r,
        )
        self.cache_hits = Counter(
            "recsys_cache_hits",
            "Answers served from the per-snapshot cache.",
            ["cache"],
            registry=r,
        )
        self.cache_misses = Counter(
            "recsys_cache_misses", "Answers computed (not in the cache).", ["cache"], registry=r
        )
        # this worker's snapshot and process, computed when scraped (not shared: see above)
        self.served = ServedSnapshot()
        self.swaps = Counter(
            "recsys_snapshot_swaps", "Snapshots loaded and swapped in.", registry=r
        )
        self.swap_failures = Counter(
            "recsys_snapshot_swap_failures",
            "Snapshots refused or not loadable, by reason; the old one kept serving.",
            ["reason"],
            registry=r,
        )
        self.events_accepted = Counter(
            "recsys_events_accepted",
            "Events durably written to the landing area.",
            registry=r,
        )
        self.events_repeated = Counter(
            "recsys_events_unkeyed_repeats",
            "Batches sent without Idempotency-Key whose body this worker accepted from the "
            "same caller in the ten minutes before (api.events.RecentBatches): likely retries, "
            "landed twice.",
            registry=r,
        )
        self.impressions_logged = Counter(
            "recsys_impressions_logged",
            "Recommendation answers kept for the impression log (api.impressions).",
            registry=r,
        )
        self.impressions_written = Counter(
            "recsys_impressions_written",
            "Impressions written to the lake's landing/impressions/.",
            registry=r,
        )
        self.impressions_dropped = Counter(
            "recsys_impressions_dropped",
            "Impressions not logged because the buffer was full (the lake slow or down): "
            "the answers went out, their record did not.",
            registry=r,
        )
        self.impression_write_failures = Counter(
            "recsys_impression_write_failures",
            "Attempts to write a file of impressions to the lake that failed.",
            registry=r,
        )
        self.experiment_reload_failures = Counter(
            "recsys_experiments_reload_failures",
            "Edits of the experiments file that could not be loaded; the last good one stayed.",
            registry=r,
        )
        folder = os.environ.get(MULTIPROCESS_DIR)
        if folder:  # what /metrics renders: every worker's files, and this worker's own
            self.exposed = CollectorRegistry(auto_describe=True)
            multiprocess.MultiProcessCollector(self.exposed, path=folder)
        else:
            self.exposed = r
        self.exposed.register(self.served)
        ProcessCollector(registry=self.exposed)  # resident memory, CPU, open files
        # children by label values, made once (`labels()` takes a lock on every call); every
        # series exists from the start, at 0, so that rates and alerts see them
        self._answers = {key: self.recommendations.labels(*key) for key in ANSWERS}
        self._hits = {cache: self.cache_hits.labels(cache) for cache in CACHES}
        self._misses = {cache: self.cache_misses.labels(cache) for cache in CACHES}
        for reason in SWAP_FAILURE_REASONS:
            self.swap_failures.labels(reason)
        self._durations: dict[tuple[str, str, int], Histogram] = {}

    def count_answer(self, route: str, strategy: str) -> None:
        child = self._answers.get((route, strategy))
        if child is None:
            child = self._answers[(route, strategy)] = self.recommendations.labels(route, strategy)
        child.inc()

    def count_cache(self, cache: str, hit: bool) -> None:
        (self._hits if hit else self._misses)[cache].inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in HTTP_METHODS:  # any token is a method to the parser: a label per
            method = "OTHER"  # made-up one would let a caller grow the series without bound
        key = (method, route, status)
        child = self._durations.get(key)
        if child is None:
            child = self.request_duration.labels(method, route, str(status))
            self._durations[key] = child
        child.observe(seconds)

    def track_snapshot_age(self, cutoff_epoch: Callable[[], float | None]) -> None:
        """Compute the age at scrape time from whatever snapshot is served then."""
        self.served.cutoff_epoch = cutoff_epoch

    def snapshot_loaded(self, info: dict[str, str], seconds: float) -> None:
        self.served.info = dict(info)
        self.served.load_seconds = seconds


class ServedSnapshot(Collector):
    """recsys_snapshot_info, _age_seconds and _load_seconds of this process, at scrape time."""

    def __init__(self) -> None:
        self.info: dict[str, str] | None = None
        self.load_seconds = math.nan
        self.cutoff_epoch: Callable[[], float | None] = lambda: None

    def collect(self) -> Iterator[Any]:
        cutoff = self.cutoff_epoch()
        yield GaugeMetricFamily(
            "recsys_snapshot_age_seconds",
            "Seconds since the served snapshot's feature cutoff (feature freshness); NaN when "
            "no snapshot is loaded.",
            value=math.nan if cutoff is None else time.time() - cutoff,
        )
        info = InfoMetricFamily("recsys_snapshot", "The snapshot being served.")
        if self.info is not None:  # recsys_snapshot_info{version=..., model_version=...} 1
            info.add_metric([], self.info)
        yield info
        yield GaugeMetricFamily(
            "recsys_snapshot_load_seconds",
            "How long the served snapshot took to download, verify, load and warm.",
            value=self.load_seconds,
        )

    def describe(self) -> Iterator[Any]:
        return self.collect()


def fresh_multiprocess_dir(parent: Path) -> Path:
    """An empty folder for the workers' metric files (files of an earlier server would count)."""
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="metrics-", dir=parent))
