"""The strategies: what a visitor, a session or an item gets, from one snapshot.

Every list is built the same way (`_Picker`): sources are offered in order of preference and
each keeps the items that pass the filters (not excluded, not bought by the visitor, available,
in the asked category, not already picked) until `k` are picked. The last source is always the
catalogue by popularity, so `k` items come back whenever the catalogue has them.

- `for_visitor` (GET): the published list (`personalized`); a visitor without one but with
  history gets the similar items of their latest items (`session`, unranked: the GET path does
  not run the ranker, to stay in the microseconds); anyone else popular items (`popular`).
  The published list is refilled from the visitor's ALS candidates, then from popular items.
- `for_session` (POST): candidates = the visitor's ALS candidates + the similar items of the
  session's latest items (or of the visitor's latest items when there is no session) + popular
  items (`candidate_pool`, the pool the published lists were ranked from), ranked by the
  snapshot's CatBoost ranker on request-time features (`api.features`). `personalized` when
  the visitor has ALS candidates, `session` otherwise.
- `similar_to` (similar items): the item's similar items, then popular items of its category.

Experiments (`recsys.experiments`) choose a policy per visitor; `for_policy` answers with it:
`ranker` is the two above, `als` the visitor's ALS candidates in ALS order without the ranker
(then similar and popular items), `popularity` the popular list, and `interleaved` mixes two of
them by team draft, recording which policy placed each item.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from api import features
from api.snapshot import Snapshot
from recsys.candidate_sources import (
    POPULAR_CANDIDATES,
    SIMILAR_CANDIDATES,
    SIMILAR_PER_SEED,
    SIMILAR_SEEDS,
)

SEED_ITEMS = 10  # the latest items of a session (or history) whose similar items are candidates
SESSION_CANDIDATES = 100  # similar items of a session ranked per request


@dataclass
class Answer:
    """A finished list: strategy and one entry per item, in rank order."""

    strategy: str
    item_ids: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # ranker | als | similar | popular
    confidences: list[float | None] = field(default_factory=list)
    categories: list[int | None] = field(default_factory=list)  # None: not looked up yet
    teams: list[str] | None = None  # interleaved lists: the policy that placed each item

    def items_json(self, snapshot: Snapshot) -> bytes:
        """The `items` array as JSON bytes (rendered once, cached with the answer).

        Written with one format string per item: json.dumps of a list of dicts costs several
        times as much, and the values are only ints, floats and the four source names.
        """
        categories = list(self.categories)
        unknown = [i for i, c in enumerate(categories) if c is None]
        if unknown:
            ids = np.asarray([self.item_ids[i] for i in unknown], dtype=np.int64)
            for i, category in zip(unknown, snapshot.items.category_of(ids).tolist(), strict=True):
                categories[i] = category
        rows = [
            (_ROW_NO_CONFIDENCE if conf is None else _ROW)(
                item,
                rank,
                score if math.isfinite(score) else 0.0,
                source,
                category,
                0.0 if conf is None or not math.isfinite(conf) else conf,
            )
            for rank, (item, score, source, conf, category) in enumerate(
                zip(
                    self.item_ids,
                    self.scores,
                    self.sources,
                    self.confidences,
                    categories,
                    strict=True,
                ),
                start=1,
            )
        ]
        return ("[" + ",".join(rows) + "]").encode()


# one item of the JSON array; numbers with 6 decimals (JSON has no NaN or infinity, and such a
# score says nothing: it is written as 0)
_ROW = (
    '{{"item_id":{0:d},"rank":{1:d},"score":{2:.6f},"source":"{3}","confidence":{5:.6f},'
    '"category_id":{4:d}}}'
).format
_ROW_NO_CONFIDENCE = (
    '{{"item_id":{0:d},"rank":{1:d},"score":{2:.6f},"source":"{3}","confidence":null,'
    '"category_id":{4:d}}}'
).format


_NONE = np.zeros(0, dtype=np.int64)


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which `values` are in `sorted_set` (sorted, unique): np.isin without its setup cost."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(sorted_set.searchsorted(values), len(sorted_set) - 1)
    return np.asarray(sorted_set[pos] == values)


class _Picker:
    """Builds one list from sources offered in order (see the module doc)."""

    def __init__(
        self,
        snapshot: Snapshot,
        k: int,
        category_id: int | None,
        exclude: Sequence[int],
        visitor_id: int | None,
    ) -> None:
        self.snapshot = snapshot
        self.k = k
        self.category_id = category_id
        self.excluded = np.unique(np.asarray(exclude, dtype=np.int64)) if exclude else _NONE
        self.visitor_id = visitor_id
        self._blocked: np.ndarray | None = None
        self.answer = Answer(strategy="popular")

    @property
    def blocked(self) -> np.ndarray:
        """Excluded and bought items, sorted (looked up once, when first needed)."""
        if self._blocked is None:
            bought = self.snapshot.purchased(self.visitor_id)
            self._blocked = np.union1d(self.excluded, bought) if len(bought) else self.excluded
        return self._blocked

    @property
    def missing(self) -> int:
        return self.k - len(self.answer.item_ids)

    def offer(
        self,
        items: np.ndarray,
        scores: np.ndarray,
        source: str,
        confidences: np.ndarray | None = None,
        *,
        catalogue: bool = False,
        facts: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> int:
        """Pick from `items` (unique, in order) those that pass the filters; return how many.

        Every source is filtered, the published list too (the pipeline leaves bought and
        unavailable items out of it; this makes sure of it). Items are looked at a chunk at a
        time, so that a list of 50 (or the catalogue) costs the lookups of the few it gives:
        on a full-scale catalogue each lookup is a few cache misses.
        `catalogue`: available items of the asked scope (no lookup needed), so only the first
        `missing + blocked + picked` can be needed. `facts`: (category, available) of each
        item, known already (the published lists carry them).
        """
        n = len(items)
        if catalogue:
            n = min(n, self.missing + len(self.blocked) + len(self.answer.item_ids))
        taken = start = 0
        while self.missing > 0 and start < n:
            stop = min(n, start + max(2 * self.missing, 16))
            taken += self._take(
                items[start:stop],
                scores[start:stop],
                None if confidences is None else confidences[start:stop],
                source,
                catalogue,
                None if facts is None else (facts[0][start:stop], facts[1][start:stop]),
            )
            start = stop
        return taken

    def _take(
        self,
        items: np.ndarray,
        scores: np.ndarray,
        confidences: np.ndarray | None,
        source: str,
        catalogue: bool,
        facts: tuple[np.ndarray, np.ndarray] | None,
    ) -> int:
        ok = ~_member(items, self.blocked)
        picked = self.answer.item_ids
        if picked:
            ok &= ~_member(items, np.unique(np.asarray(picked, dtype=np.int64)))
        categories: np.ndarray | None = None
        if not catalogue:
            if facts is not None:
                categories, available = facts
            else:
                available, categories = self.snapshot.items.lookup(items)
            ok &= available
            if self.category_id is not None:
                ok &= categories == self.category_id
        index = np.flatnonzero(ok)[: self.missing]
        answer = self.answer
        answer.item_ids.extend(items[index].tolist())
        answer.scores.extend(scores[index].tolist())
        answer.sources.extend([source] * len(index))
        if confidences is None:
            answer.confidences.extend([None] * len(index))
        else:
            answer.confidences.extend(confidences[index].tolist())
        if categories is not None:
            answer.categories.extend(categories[index].tolist())
        elif catalogue and self.category_id is not None:
            answer.categories.extend([self.category_id] * len(index))
        else:
            answer.categories.extend([None] * len(index))
        return len(index)

    def fill_with_popular(self, category_id: int | None = None) -> None:
        """Popular items of a category (default: the asked one, or overall), then that whole
        catalogue by popularity."""
        scope = self.category_id if category_id is None else category_id
        (head, head_scores), (tail, tail_scores) = self.snapshot.popular_for(scope)
        self.offer(head, head_scores, "popular")
        vetted = self.category_id is None or scope == self.category_id
        self.offer(tail, tail_scores, "popular", catalogue=vetted)


def similar_of(snapshot: Snapshot, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items similar to any of `seeds` (the first SIMILAR_PER_SEED of each), by summed
    similarity, added up seed after seed (ties: smaller id first)."""
    cols = snapshot.similar_cols
    parts_items, parts_scores = [], []
    for seed in seeds:
        start, end = snapshot.similar.span(int(seed))
        end = min(end, start + SIMILAR_PER_SEED)
        if end > start:
            parts_items.append(cols["similar_item_id"][start:end])
            parts_scores.append(cols["similarity"][start:end])
    if not parts_items:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    items = np.concatenate(parts_items).astype(np.int64)
    scores = np.concatenate(parts_scores).astype(np.float64)
    unique, inverse = np.unique(items, return_inverse=True)
    total = np.bincount(inverse, weights=scores, minlength=len(unique))
    order = np.lexsort((unique, -total))
    return unique[order], total[order]


def latest_items(snapshot: Snapshot, visitor_id: int, n: int = SEED_ITEMS) -> np.ndarray:
    """The visitor's `n` most recent items before the cutoff (most recent first)."""
    start, end = snapshot.interactions.span(visitor_id)
    if end == start:
        return np.zeros(0, dtype=np.int64)
    cols = snapshot.interaction_cols
    days = np.nan_to_num(cols["days_since"][start:end], nan=np.inf)
    order = np.lexsort((cols["item_id"][start:end], days))[:n]
    return cols["item_id"][start:end][order].astype(np.int64)


def session_seeds(session_item_ids: Sequence[int], n: int = SEED_ITEMS) -> np.ndarray:
    """The session's `n` latest distinct items, most recent first (the list is in time order)."""
    seen: dict[int, None] = {}
    for item in reversed(session_item_ids):
        if item not in seen:
            seen[item] = None
            if len(seen) == n:
                break
    return np.fromiter(seen, dtype=np.int64, count=len(seen))


def for_visitor(
    snapshot: Snapshot,
    visitor_id: int,
    k: int,
    category_id: int | None = None,
    exclude: Sequence[int] = (),
) -> Answer:
    """GET /v1/recommendations/{visitor_id}: see the module doc."""
    start, end = snapshot.recs.span(visitor_id)
    if end - start >= k and category_id is None and not exclude:
        quick = _published_head(snapshot, visitor_id, start, k)
        if quick is not None:
            return quick
    picker = _Picker(snapshot, k, category_id, exclude, visitor_id)
    if end > start:
        picker.answer.strategy = "personalized"
        cols = snapshot.rec_cols
        picker.offer(
            cols["item_id"][start:end],
            cols["score"][start:end],
            "ranker",
            snapshot.rec_confidences(start, end),
            facts=(cols["category"][start:end], cols["available"][start:end]),
        )
        if picker.missing > 0:
            c_start, c_end = snapshot.candidates.span(visitor_id)
            ccols = snapshot.candidate_cols
            picker.offer(ccols["item_id"][c_start:c_end], ccols["als_score"][c_start:c_end], "als")
    else:
        seeds = latest_items(snapshot, visitor_id)
        if len(seeds):
            items, scores = similar_of(snapshot, seeds)
            if picker.offer(items, scores, "similar"):
                picker.answer.strategy = "session"
    if picker.missing > 0:
        picker.fill_with_popular()
    return picker.answer


def _published_head(snapshot: Snapshot, visitor_id: int, start: int, k: int) -> Answer | None:
    """The most common request, the head of a published list without filters, in a handful of
    array operations; None when some of the head cannot be served as it is (an item since
    unavailable or bought: rare, as the pipeline leaves them out), for the general path."""
    cols = snapshot.rec_cols
    stop = start + k
    if not cols["available"][start:stop].all():
        return None
    items = cols["item_id"][start:stop]
    bought = snapshot.purchased(visitor_id)
    if len(bought) and _member(items, bought).any():
        return None
    return Answer(
        strategy="personalized",
        item_ids=items.tolist(),
        scores=cols["score"][start:stop].tolist(),
        sources=["ranker"] * k,
        confidences=snapshot.rec_confidences(start, stop).tolist(),
        categories=cols["category"][start:stop].tolist(),
    )


def for_session(
    snapshot: Snapshot,
    visitor_id: int | None,
    session_item_ids: Sequence[int],
    k: int,
    category_id: int | None = None,
    exclude: Sequence[int] = (),
) -> Answer:
    """POST /v1/recommendations: ranks at request time; see the module doc."""
    picker = _Picker(snapshot, k, category_id, exclude, visitor_id)
    pool, sources = candidate_pool(snapshot, visitor_id, session_item_ids)
    als_items = pool[(sources == "als") | (sources == "revisit")]
    # filter before scoring: the ranker only sees what could be recommended
    ok = ~_member(pool, picker.blocked) & snapshot.items.available_of(pool)
    if category_id is not None:
        ok &= snapshot.items.category_of(pool) == category_id
    pool, sources = pool[ok], sources[ok]
    if len(pool):
        columns = features.feature_columns(snapshot, visitor_id, pool, sources)
        scores = features.score(snapshot, columns)
        order = np.lexsort((pool, -scores))
        picker.offer(pool[order], scores[order], "ranker")
    if len(als_items):
        picker.answer.strategy = "personalized"
    elif picker.answer.item_ids:
        picker.answer.strategy = "session"
    if picker.missing > 0:
        picker.fill_with_popular()
    return picker.answer


def candidate_pool(
    snapshot: Snapshot, visitor_id: int | None, session_item_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(items, sources) the ranker scores for a POST: the pool of `recsys.candidate_sources`.

    The visitor's published ALS candidates (`als`, `revisit`); the similar items of the
    session's latest items (up to SESSION_CANDIDATES), or without a session of the visitor's
    SIMILAR_SEEDS latest items (up to SIMILAR_CANDIDATES: the published list's own pool);
    then POPULAR_CANDIDATES popular items, when there is anything to rank them with.
    """
    als_items = np.zeros(0, dtype=np.int64)
    als_sources = np.zeros(0, dtype=object)
    if visitor_id is not None:
        start, end = snapshot.candidates.span(visitor_id)
        als_items = snapshot.candidate_cols["item_id"][start:end].astype(np.int64)
        seen = snapshot.candidate_cols["is_seen"][start:end]
        als_sources = np.where(seen, "revisit", "als").astype(object)
    seeds, n_similar = session_seeds(session_item_ids), SESSION_CANDIDATES
    if len(seeds) == 0 and visitor_id is not None:
        seeds, n_similar = latest_items(snapshot, visitor_id, SIMILAR_SEEDS), SIMILAR_CANDIDATES
    similar, _ = similar_of(snapshot, seeds)
    similar = similar[~np.isin(similar, als_items)][:n_similar]
    offered = np.concatenate([als_items, similar])
    popular = np.zeros(0, dtype=np.int64)
    if len(offered):
        head = snapshot.popular_for(None)[0][0]
        popular = head[~np.isin(head, offered)][:POPULAR_CANDIDATES]
    items = np.concatenate([offered, popular])
    sources = np.concatenate(
        [
            als_sources,
            np.full(len(similar), "similar", dtype=object),
            np.full(len(popular), "popular", dtype=object),
        ]
    )
    return items, sources


def similar_to(snapshot: Snapshot, item_id: int, k: int) -> Answer:
    """GET /v1/items/{item_id}/similar: see the module doc."""
    picker = _Picker(snapshot, k, None, (item_id,), None)
    start, end = snapshot.similar.span(item_id)
    cols = snapshot.similar_cols
    if picker.offer(cols["similar_item_id"][start:end], cols["similarity"][start:end], "similar"):
        picker.answer.strategy = "similar"
    category = int(snapshot.items.category_of(np.asarray([item_id], np.int64))[0])
    if picker.missing > 0 and category != -1:
        picker.fill_with_popular(category)
    if picker.missing > 0:
        picker.fill_with_popular()
    return picker.answer


def als_order(
    snapshot: Snapshot,
    visitor_id: int | None,
    session_item_ids: Sequence[int],
    k: int,
    category_id: int | None = None,
    exclude: Sequence[int] = (),
) -> Answer:
    """The `als` policy: the visitor's ALS candidates in ALS order (the ranker left out), then
    the items similar to the session's (or the visitor's latest) items, then popular items:
    the candidate pool in the order ALS alone gives it (`als` in metrics.json)."""
    picker = _Picker(snapshot, k, category_id, exclude, visitor_id)
    if visitor_id is not None:
        start, end = snapshot.candidates.span(visitor_id)
        cols = snapshot.candidate_cols
        if picker.offer(cols["item_id"][start:end], cols["als_score"][start:end], "als"):
            picker.answer.strategy = "personalized"
    if picker.missing > 0:
        seeds = session_seeds(session_item_ids)
        if len(seeds) == 0 and visitor_id is not None:
            seeds = latest_items(snapshot, visitor_id)
        if len(seeds):
            items, scores = similar_of(snapshot, seeds)
            if picker.offer(items, scores, "similar") and picker.answer.strategy == "popular":
                picker.answer.strategy = "session"
    if picker.missing > 0:
        picker.fill_with_popular()
    return picker.answer


def popularity(
    snapshot: Snapshot,
    visitor_id: int | None,
    k: int,
    category_id: int | None = None,
    exclude: Sequence[int] = (),
) -> Answer:
    """The `popularity` policy: the popular list (of the category), for everyone."""
    picker = _Picker(snapshot, k, category_id, exclude, visitor_id)
    picker.fill_with_popular()
    return picker.answer


def for_policy(
    snapshot: Snapshot,
    policy: str,
    route: str,
    visitor_id: int | None,
    session_item_ids: Sequence[int],
    k: int,
    category_id: int | None = None,
    exclude: Sequence[int] = (),
) -> Answer:
    """The answer of one plain policy (`recsys.experiments.PLAIN_POLICIES`) on `route`
    (`visitor`: GET, `session`: POST, which ranks now)."""
    if policy == "ranker":
        if route == "session":
            return for_session(snapshot, visitor_id, session_item_ids, k, category_id, exclude)
        assert visitor_id is not None
        return for_visitor(snapshot, visitor_id, k, category_id, exclude)
    if policy == "als":
        return als_order(snapshot, visitor_id, session_item_ids, k, category_id, exclude)
    if policy == "popularity":
        return popularity(snapshot, visitor_id, k, category_id, exclude)
    raise ValueError(f"unknown policy {policy!r}")


def interleaved(
    snapshot: Snapshot,
    sides: tuple[str, str],
    draft: Callable[[list[int], list[int], int], tuple[list[int], list[str]]],
    route: str,
    visitor_id: int | None,
    session_item_ids: Sequence[int],
    k: int,
    category_id: int | None = None,
    exclude: Sequence[int] = (),
) -> Answer:
    """Two policies' lists mixed by `draft` (team draft, `recsys.experiments.team_draft` with its
    seed bound), each item keeping the score and source its own list gave it, and its team.

    Each side's list is asked for twice `k` items (at most 100): when the other team took a
    side's first choices, it picks further down its own list.
    """
    depth = min(2 * k, 100)
    a, b = (
        for_policy(snapshot, side, route, visitor_id, session_item_ids, depth, category_id, exclude)
        for side in sides
    )
    items, teams = draft(a.item_ids, b.item_ids, k)
    rows = {}
    for answer in (b, a):  # a's row wins for an item both lists hold
        for i, item in enumerate(answer.item_ids):
            rows[item] = (answer.scores[i], answer.sources[i], answer.categories[i])
    out = Answer(strategy=a.strategy if a.item_ids else b.strategy, teams=list(teams))
    for item in items:
        score, source, category = rows[item]
        out.item_ids.append(item)
        out.scores.append(score)
        out.sources.append(source)
        out.confidences.append(None)  # calibrated for one list's ranks, not for a mix
        out.categories.append(category)
    return out
