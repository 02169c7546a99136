"""One published snapshot in memory for serving: its data structures.

`api.loader.load` fills them from the snapshot file (`models_ml/snapshot.py` writes it) and
closes DuckDB; `api.cache.AnswerCache` keeps each snapshot's encoded answers. The hot path
never touches DuckDB: a lookup is a binary search in sorted ids (`np.searchsorted`) and a
slice.

Layout in memory (`Groups`: rows sorted by a key, the rows of `keys[i]` at
`offsets[i]:offsets[i + 1]`):

- `recs`: the published list of each visitor, in rank order (item, score, confidence, and
  the item's category and availability, so that serving a list searches nothing else);
- `candidates`: each published visitor's ALS candidates in ALS rank order;
- `similar`: the similar items of each item in similarity order;
- `interactions` and `affinities`: each visitor's items (sorted by item id) and categories
  (sorted by category id), for request-time features and the purchased-items filter;
- `items` and `visitors`: one row per id, sorted by id;
- `popular`: the snapshot's popular items per category (`popular_all`: overall), then the
  whole available catalogue per category (and overall) by popularity, so that a list can
  always be filled when the catalogue allows.

Feature values are stored as float32 (what `models_ml.ranker.feature_frame` hands CatBoost),
counts as int32 and ids as int32 when they fit, to keep a full-scale snapshot well under a
gigabyte (two are in memory for a moment during a swap).
"""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from api.cache import AnswerCache
from api.trees import CompiledRanker
from recsys.ranking_features import ITEM_FEATURES, VISITOR_FEATURES
from recsys.snapshots import SNAPSHOT_TABLES

# the columns the service reads from each table (models_ml/snapshot.py writes them)
COLUMNS: dict[str, tuple[str, ...]] = {
    "metadata": ("key", "value"),
    "items": (
        "item_id",
        "category_id",
        "root_category_id",
        "is_available",
        *(column for column, _ in ITEM_FEATURES.values()),
    ),
    "visitors": (
        "visitor_id",
        *(column for column, _ in VISITOR_FEATURES.values()),
        "top_category_id",
    ),
    "interactions": (
        "visitor_id",
        "item_id",
        "n_events",
        "n_views",
        "n_carts",
        "n_purchases",
        "weight",
        "last_interaction_at",
    ),
    "visitor_category_affinities": (
        "visitor_id",
        "category_id",
        "n_events",
        "n_carts",
        "affinity_share",
        "affinity_score",
        "last_event_at",
    ),
    "recommendations": ("visitor_id", "item_id", "rank", "score", "confidence"),
    "candidates": ("visitor_id", "item_id", "als_score", "als_rank", "is_seen"),
    "similar_items": ("item_id", "similar_item_id", "similarity", "similarity_rank"),
    "popular_items": ("category_id", "item_id", "score", "rank"),
    "ranker": ("name", "model", "metadata"),
}
assert set(COLUMNS) == set(SNAPSHOT_TABLES)
REQUIRED_METADATA = ("cutoff_at", "model_version", "feature_version")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")  # model and feature versions
NO_CATEGORY = np.iinfo(np.int64).min  # a visitor without a top category: equals no category


class SnapshotInvalid(ValueError):
    """The snapshot cannot be served: a table, column, value or the model is wrong."""


def _compact(values: np.ndarray) -> np.ndarray:
    """int32 when every value fits (RetailRocket's ids and offsets do), else as given."""
    wide = values.dtype.kind == "i" and values.itemsize > 4
    if wide and (len(values) == 0 or (values.min() >= -(2**31) and values.max() < 2**31)):
        return values.astype(np.int32)
    return values


@dataclass(frozen=True, eq=False)
class Groups:
    """Rows sorted by key: the rows of `keys[i]` are `offsets[i]:offsets[i + 1]`.

    Keys and offsets are int32 when they fit; `span` takes any Python int (a key outside the
    stored range is absent, never an overflow).
    """

    keys: np.ndarray  # sorted, unique
    offsets: np.ndarray  # len(keys) + 1

    @classmethod
    def of(cls, keys: np.ndarray, offsets: np.ndarray) -> Groups:
        return cls(_compact(keys), _compact(offsets))

    @functools.cached_property
    def bounds(self) -> tuple[int, int]:
        return (int(self.keys[0]), int(self.keys[-1])) if len(self.keys) else (1, 0)

    def span(self, key: int) -> tuple[int, int]:
        """(start, end) of the key's rows; (0, 0) when the key is absent."""
        lo, hi = self.bounds
        if not lo <= key <= hi:
            return 0, 0
        # the method (np.searchsorted's wrapper costs 2 us), with a key of the keys' own type:
        # a Python int would make NumPy convert the whole array to int64 first
        i = int(self.keys.searchsorted(self.keys.dtype.type(key)))
        if int(self.keys[i]) == key:
            return int(self.offsets[i]), int(self.offsets[i + 1])
        return 0, 0

    def __contains__(self, key: int) -> bool:
        start, end = self.span(key)
        return end > start

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.offsets.nbytes)


@dataclass(frozen=True)
class Items:
    """The catalogue: one row per item id (sorted), with its features as of the cutoff."""

    ids: np.ndarray  # int64, sorted
    category: np.ndarray  # int64, -1 when unknown (the marts' own "unknown")
    root_category: np.ndarray  # int64
    available: np.ndarray  # bool; unknown availability counts as available (as in the marts)
    features: dict[str, np.ndarray]  # float32 by ranking feature name (item_* and price)

    def positions(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each id, whether it is in the catalogue)."""
        pos = np.minimum(self.ids.searchsorted(item_ids), max(len(self.ids) - 1, 0))
        found = (self.ids[pos] == item_ids) if len(self.ids) else np.zeros(len(item_ids), bool)
        return pos, found

    def lookup(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(available, category) of each id in one search; unknown items are available and of
        category -1, as `ranking_features` has them."""
        if len(self.ids) == 0:
            return np.ones(len(item_ids), dtype=bool), np.full(len(item_ids), -1, np.int64)
        pos, found = self.positions(item_ids)
        return np.where(found, self.available[pos], True), np.where(found, self.category[pos], -1)

    def category_of(self, item_ids: np.ndarray) -> np.ndarray:
        pos, found = self.positions(item_ids)
        return np.where(found, self.category[pos] if len(self.ids) else -1, -1)

    def available_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Unknown items count as available, as `ranking_features` has it."""
        pos, found = self.positions(item_ids)
        return np.where(found, self.available[pos] if len(self.ids) else True, True)


@dataclass
class Ranker:
    model: Any  # catboost.CatBoostRanker
    features: list[str]  # the model's input columns, in order
    cat_features: list[str]
    metadata: dict[str, Any]
    # the model's trees as arrays (api.trees), None where CatBoost scores: set at load
    compiled: CompiledRanker | None = None

    @functools.cached_property
    def numeric_features(self) -> list[str]:
        """The model's numeric inputs, in order (computed once: every POST needs them)."""
        return [f for f in self.features if f not in self.cat_features]


@dataclass
class Snapshot:
    """Everything one snapshot serves, in memory. Immutable once loaded (except its caches)."""

    version: str
    manifest: dict[str, Any]
    metadata: dict[str, Any]
    cutoff_at: datetime  # naive UTC, as dbt has it
    items: Items
    visitors: dict[str, np.ndarray]  # "ids" sorted, then one array per feature
    interactions: Groups
    interaction_cols: dict[str, np.ndarray]
    affinities: Groups
    affinity_cols: dict[str, np.ndarray]
    recs: Groups
    rec_cols: dict[str, np.ndarray]
    candidates: Groups
    candidate_cols: dict[str, np.ndarray]
    similar: Groups
    similar_cols: dict[str, np.ndarray]
    popular: Groups  # each category's popular items, in rank order
    popular_items: np.ndarray  # int64
    popular_scores: np.ndarray  # float64
    popular_all: tuple[np.ndarray, np.ndarray]  # (items, scores) of the overall popular list
    catalogue: Groups  # available items per category, most popular first
    catalogue_items: np.ndarray
    catalogue_scores: np.ndarray
    catalogue_all: tuple[np.ndarray, np.ndarray]  # every available item, most popular first
    ranker: Ranker
    max_als_rank: int
    confidence_by_rank: np.ndarray | None  # [rank] -> confidence, when it depends on rank only
    loaded_at: float = field(default_factory=time.time)
    cache: AnswerCache = field(default_factory=lambda: AnswerCache(0))
    similar_cache: AnswerCache = field(default_factory=lambda: AnswerCache(0))

    @property
    def model_version(self) -> str:
        return str(self.metadata["model_version"])

    @functools.cached_property
    def versions_json(self) -> bytes:
        """`"snapshot_version":..,"model_version":..` for the answers, rendered once."""
        return (
            f'"snapshot_version":{json.dumps(self.version)},'
            f'"model_version":{json.dumps(self.model_version)}'
        ).encode()

    @property
    def feature_version(self) -> str:
        return str(self.metadata["feature_version"])

    @property
    def cutoff_epoch(self) -> float:
        return self.cutoff_at.replace(tzinfo=UTC).timestamp()

    @property
    def nbytes(self) -> int:
        """Bytes held in arrays (the bulk of the snapshot's memory)."""
        total = 0
        # copies of the views: a request thread may fill a cached_property (a new key in
        # vars(self)) or a dict while this runs, and iterating a live view would then fail
        for value in list(vars(self).values()):
            if isinstance(value, np.ndarray | Groups):
                total += value.nbytes
            elif isinstance(value, tuple):  # (items, scores): popular_all, catalogue_all
                total += sum(a.nbytes for a in value if isinstance(a, np.ndarray))
            elif isinstance(value, dict):
                for v in list(value.values()):
                    if isinstance(v, np.ndarray):
                        total += v.nbytes
                    elif isinstance(v, tuple):
                        total += sum(a.nbytes for a in v if isinstance(a, np.ndarray))
            elif isinstance(value, Items):
                total += sum(a.nbytes for a in (value.ids, value.category, value.root_category))
                total += value.available.nbytes
                total += sum(a.nbytes for a in value.features.values())
        return total

    def rec_confidences(self, start: int, end: int) -> np.ndarray:
        """Confidence of the published rows start:end (of one visitor)."""
        if self.confidence_by_rank is not None:
            return self.confidence_by_rank[1 : end - start + 1]
        return self.rec_cols["confidence"][start:end]

    def candidate_ranks(self, start: int, end: int) -> np.ndarray:
        """ALS rank of the candidate rows start:end (of one visitor)."""
        if "als_rank" in self.candidate_cols:
            return self.candidate_cols["als_rank"][start:end]
        return np.arange(1, end - start + 1, dtype=np.int32)  # checked at load: 1, 2, ...

    def visitor_row(self, visitor_id: int | None) -> int | None:
        if visitor_id is None:
            return None
        ids = self.visitors["ids"]  # int64, as the key
        i = int(ids.searchsorted(np.int64(visitor_id)))
        return i if i < len(ids) and int(ids[i]) == visitor_id else None

    def purchased(self, visitor_id: int | None) -> np.ndarray:
        """Items the visitor bought before the cutoff (sorted)."""
        if visitor_id is None:
            return np.zeros(0, dtype=np.int64)
        start, end = self.interactions.span(visitor_id)
        items = self.interaction_cols["item_id"][start:end]
        return items[self.interaction_cols["n_purchases"][start:end] > 0].astype(np.int64)

    def popular_for(
        self, category_id: int | None
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """((items, scores) of the snapshot's popular list of the scope, (items, scores) of the
        scope's whole available catalogue by popularity, to fill up after it)."""
        if category_id is None:
            return self.popular_all, self.catalogue_all
        start, end = self.popular.span(category_id)
        head = (self.popular_items[start:end], self.popular_scores[start:end])
        start, end = self.catalogue.span(category_id)
        return head, (self.catalogue_items[start:end], self.catalogue_scores[start:end])
