"""Where a visitor's candidates come from: one definition for the pipeline and the API.

The ranker is trained and its lists published on a pool built offline
(`models_ml.candidates.add_sources`), and the API builds the same pool at request time
(`api.recommend.for_session`). Both must follow the same rules, or the ranker meets rows at
serving time that it never saw in training, and a POST answer differs from the published list.

A visitor's pool, each item tagged with the first source that offers it (the tag is the ranker
feature `candidate_source`):

- `als`: the best items ALS finds among those the visitor has not met;
- `revisit`: items the visitor has met (their heaviest interactions), scored by ALS alike;
- `similar`: items similar to the visitor's `SIMILAR_SEEDS` latest items (most recent first,
  ties by item id), by similarity summed over those items, ties by item id; the first
  `SIMILAR_CANDIDATES` that ALS did not offer;
- `popular`: the popular list (overall, the API's fallback), the first `POPULAR_CANDIDATES`
  items that no other source offered.

Items from `similar` and `popular` have no ALS score (missing) and rank after ALS's list.
"""

from __future__ import annotations

SOURCES = ("als", "revisit", "similar", "popular")
SIMILAR_SEEDS = 5
SIMILAR_CANDIDATES = 30
POPULAR_CANDIDATES = 10
