"""Ranking features at request time, computed as `ranking_features.sql` computes them.

For a visitor and candidate items, one row per item with the mart's columns, names and
defaults, from the snapshot's tables as of its cutoff (times are days before `cutoff_at`,
precomputed at load with the same DuckDB expression dbt uses):

- item columns from `items`, coalesced as the mart does (counts and popularity to 0, category
  to -1, availability to true; price, rates, trend and age stay missing);
- visitor columns from `visitors` (counts to 0; recency, tenure and share stay missing);
- pair columns from `interactions` and category columns from `visitor_category_affinities`
  joined on the item's (coalesced) category; `is_top_category` false when unknown.

The session contributes candidates, never features: the ranker was trained on features as of a
cutoff with labels after it, so the session's events (after the snapshot's cutoff) are not
folded into the features, which keeps request-time rows on the training distribution.

ALS columns for an item that is not among the visitor's published ALS candidates (a session
candidate, or any item of a visitor without candidates) are not in the snapshot. The choice:

- `als_score` = NaN, i.e. missing. CatBoost's default `nan_mode` ("Min") treats it as below
  every score it saw, which is true: ALS ranked the item below the candidates it kept.
- `als_rank` = the longest candidate list + 1 (51 for ALS's top 50): "beyond the list", also
  true, where NaN would read as *better* than rank 1 under "Min".
- `is_seen` = whether the visitor interacted with the item before the cutoff, ALS's own
  definition (an item in the visitor's row of the interaction matrix).

`candidate_source` is what the caller says offered the item (`recsys.candidate_sources`);
an item among the visitor's published ALS candidates is `revisit` when met and `als` otherwise,
whatever the caller says, as in the mart (the first source that offers an item tags it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from api.snapshot import NO_CATEGORY, Ranker, Snapshot
from api.trees import catboost_pool
from recsys.candidate_sources import CODED_FEATURES
from recsys.ranking_features import FEATURE_COLUMNS, ITEM_FEATURES, VISITOR_FEATURES


def _missing(default: float | None) -> float:
    """The value of a feature whose row is missing: its default, else NaN (missing)."""
    return np.nan if default is None else float(default)


def _lookup(sorted_keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each wanted key in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(len(wanted), dtype=np.int64), np.zeros(len(wanted), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == wanted


def _pick(
    values: np.ndarray, pos: np.ndarray, found: np.ndarray, default: object, dtype: object
) -> np.ndarray:
    """values[pos] where found, else the default (also when `values` is empty)."""
    if len(values) == 0:
        return np.full(len(pos), default, dtype=dtype)  # type: ignore[call-overload]
    return np.where(found, values[pos], default).astype(dtype)  # type: ignore[call-overload]


def feature_rows(
    snapshot: Snapshot,
    visitor_id: int | None,
    item_ids: np.ndarray,
    sources: np.ndarray | None = None,
) -> pd.DataFrame:
    """`ranking_features` rows for (visitor, item) pairs as a DataFrame: keys, then
    FEATURE_COLUMNS (for tests and inspection; scoring uses `feature_columns`)."""
    return pd.DataFrame(feature_columns(snapshot, visitor_id, item_ids, sources))


def feature_columns(
    snapshot: Snapshot,
    visitor_id: int | None,
    item_ids: np.ndarray,
    sources: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """`ranking_features` columns for (visitor, item) pairs: keys, then FEATURE_COLUMNS.

    `sources`: the source that offered each item (default `similar`); see the module doc."""
    items = np.asarray(item_ids, dtype=np.int64)
    n = len(items)
    f32 = np.float32
    out: dict[str, np.ndarray] = {
        "visitor_id": np.full(n, -1 if visitor_id is None else visitor_id, dtype=np.int64),
        "item_id": items,
    }
    known = visitor_id is not None

    # pairs the visitor interacted with (sorted by item within the visitor)
    i_start, i_end = snapshot.interactions.span(visitor_id) if known else (0, 0)  # type: ignore[arg-type]
    icols = snapshot.interaction_cols
    ipos, ifound = _lookup(icols["item_id"][i_start:i_end], items)
    ipos = ipos + i_start

    # ALS candidates of the visitor (in ALS rank order: sorted here for the lookup)
    c_start, c_end = snapshot.candidates.span(visitor_id) if known else (0, 0)  # type: ignore[arg-type]
    ccols = snapshot.candidate_cols
    order = np.argsort(ccols["item_id"][c_start:c_end], kind="stable")
    cpos, cfound = _lookup(ccols["item_id"][c_start:c_end][order], items)
    cpos = order[cpos] if len(order) else cpos  # row within the visitor's candidates
    ranks = snapshot.candidate_ranks(c_start, c_end)
    out["als_score"] = _pick(ccols["als_score"][c_start:c_end], cpos, cfound, np.nan, f32)
    out["als_rank"] = _pick(ranks, cpos, cfound, snapshot.max_als_rank + 1, f32)
    seen = _pick(ccols["is_seen"][c_start:c_end], cpos, cfound, False, bool)
    out["is_seen"] = np.where(cfound, seen, ifound)
    given = np.full(n, "similar", dtype=object) if sources is None else np.asarray(sources, object)
    out["candidate_source"] = np.where(
        cfound, np.where(seen, "revisit", "als").astype(object), given
    )

    # the item
    cat = snapshot.items
    pos, found = cat.positions(items)
    category = _pick(cat.category, pos, found, -1, np.int64)
    out["category_id"] = category
    out["root_category_id"] = _pick(cat.root_category, pos, found, -1, np.int64)
    out["is_available"] = _pick(cat.available, pos, found, True, bool)
    for name, (_, default) in ITEM_FEATURES.items():
        out[name] = _pick(cat.features[name], pos, found, _missing(default), f32)

    # the visitor
    row = snapshot.visitor_row(visitor_id)
    vis = snapshot.visitors
    for name, (_, default) in VISITOR_FEATURES.items():
        out[name] = np.full(n, _missing(default) if row is None else vis[name][row], dtype=f32)
    top_category = NO_CATEGORY if row is None else int(vis["top_category_id"][row])

    # the pair
    out["has_viewed_item"] = _pick(icols["n_views"], ipos, ifound, 0, np.int64) > 0
    out["has_carted_item"] = _pick(icols["n_carts"], ipos, ifound, 0, np.int64) > 0
    out["has_purchased_item"] = _pick(icols["n_purchases"], ipos, ifound, 0, np.int64) > 0
    out["pair_events"] = _pick(icols["n_events"], ipos, ifound, 0, f32)
    out["pair_weight"] = _pick(icols["weight"], ipos, ifound, 0.0, f32)
    out["days_since_item_interaction"] = _pick(icols["days_since"], ipos, ifound, np.nan, f32)

    # the visitor's affinity to the item's (coalesced) category
    a_start, a_end = snapshot.affinities.span(visitor_id) if known else (0, 0)  # type: ignore[arg-type]
    acols = snapshot.affinity_cols
    apos, afound = _lookup(acols["category_id"][a_start:a_end], category)
    apos = apos + a_start
    out["category_events"] = _pick(acols["n_events"], apos, afound, 0, f32)
    out["category_affinity_share"] = _pick(acols["affinity_share"], apos, afound, 0.0, f32)
    out["category_affinity_score"] = _pick(acols["affinity_score"], apos, afound, 0.0, f32)
    out["has_carted_in_category"] = _pick(acols["n_carts"], apos, afound, 0, np.int64) > 0
    out["is_top_category"] = category == top_category
    out["days_since_category_event"] = _pick(acols["days_since"], apos, afound, np.nan, f32)
    return {name: out[name] for name in ("visitor_id", "item_id", *FEATURE_COLUMNS)}


def score(snapshot: Snapshot, columns: dict[str, np.ndarray]) -> np.ndarray:
    """The ranker's scores for the rows of `columns` (as `feature_columns` returns them).

    The values are typed as `models_ml.ranker.feature_frame` types them (numbers and flags as
    float32, NaN kept; categories as integers, which CatBoost hashes by their decimal text).
    The snapshot's compiled trees (`api.trees`) score them when it has them: CatBoost's
    scores, equal to the last bit, in ~0.06 ms for 100 rows instead of ~0.36 ms. Otherwise,
    or for a category the compiled trees have no row for, CatBoost does, handed the rows as
    `catboost.FeaturesData` (`api.trees.catboost_pool`: matched to the model by feature name;
    skipping pandas saves 5-10 ms) with one thread: on 100 rows its default (every core)
    spends more on starting and joining threads than on the work, and the other core serves
    other requests. Tests pin the scores to `models_ml.ranker.score` on the same rows, and
    the compiled trees' to CatBoost's (tests/unit/api/test_trees.py, test_session.py).
    """
    ranker = snapshot.ranker
    n = len(columns["item_id"])
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    numeric_names = ranker.numeric_features
    # one feature a row: what the compiled trees read fastest
    numeric = np.empty((len(numeric_names), n), dtype=np.float32)
    for j, name in enumerate(numeric_names):
        coded = CODED_FEATURES.get(name)
        numeric[j] = columns[name] if coded is None else coded(columns[name])
    if ranker.compiled is not None:
        scores = ranker.compiled.score(numeric, columns)
        if scores is not None:
            return scores
    return _catboost_score(ranker, np.ascontiguousarray(numeric.T), columns)


def _catboost_score(
    ranker: Ranker, numeric: np.ndarray, columns: dict[str, np.ndarray]
) -> np.ndarray:
    """CatBoost's own scores: `numeric` is (rows, numeric features)."""
    pool = catboost_pool(numeric, ranker.numeric_features, columns, ranker.cat_features)
    return np.asarray(ranker.model.predict(pool, thread_count=1), dtype=np.float64)
