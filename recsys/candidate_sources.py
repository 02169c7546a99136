"""Where a visitor's candidates come from: one definition for the pipeline and the API.

The ranker is trained and its lists published on a pool built offline
(`models_ml.candidates.add_sources`), and the API builds the same pool at request time
(`api.recommend.candidate_pool`). Both must follow the same rules, or the ranker meets rows at
serving time that it never saw in training, and a POST answer differs from the published list.

A visitor's pool, each item tagged with the first source that offers it (the tag is the
`candidate_source` column of `ranking_features`, and a ranker feature):

- `als`: the best items ALS finds among those the visitor has not met;
- `revisit`: items the visitor has met (their heaviest interactions), scored by ALS alike;
- `similar`: items similar to the visitor's `SIMILAR_SEEDS` latest items (most recent first,
  ties by item id), by similarity summed over the first `SIMILAR_PER_SEED` similar items of
  each, ties by item id; the first `SIMILAR_CANDIDATES` that ALS did not offer;
- `popular`: the popular list (overall, the API's fallback), the first `POPULAR_CANDIDATES`
  items that no other source offered.

Items from `similar` and `popular` have no ALS score (missing) and rank after ALS's list.
The ranker sees the tag as a number, its position in SOURCES (`source_codes`): four values that
a tree splits as well as a category, without CatBoost hashing a string per row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SOURCES = ("als", "revisit", "similar", "popular")
SIMILAR_SEEDS = 3
SIMILAR_PER_SEED = 20
SIMILAR_CANDIDATES = 30
POPULAR_CANDIDATES = 10


_CODES = {name: float(code) for code, name in enumerate(SOURCES)}


def source_codes(values: object) -> np.ndarray:
    """Each tag's position in SOURCES as float32 (NaN for a missing or unknown tag).

    A dict lookup per value: for the ~150 tags of a request it costs a few microseconds,
    where building a pandas Categorical cost 0.75 ms (a sixth of a POST's time)."""
    items = np.asarray(values, dtype=object).ravel().tolist()
    get, missing = _CODES.get, float("nan")
    return np.fromiter((get(v, missing) for v in items), dtype=np.float32, count=len(items))


# features the ranker takes as numbers made from their values (training and serving alike)
CODED_FEATURES: dict[str, Callable[[object], np.ndarray]] = {"candidate_source": source_codes}
