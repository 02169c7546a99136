"""ALS candidates: two clusters of items that visitors never mix must come back apart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models_ml import candidates

CLUSTER_A = np.arange(100, 110)  # item ids
CLUSTER_B = np.arange(200, 210)
SMALL = {"factors": 2, "iterations": 15, "n_candidates": 8, "n_similar": 5}


def make_interactions(seed: int = 0) -> pd.DataFrame:
    """300 visitors, each viewing 3-6 items of one cluster; visitor 9001 saw one A item only."""
    rng = np.random.default_rng(seed)
    rows = []
    for visitor in range(300):
        cluster = CLUSTER_A if visitor % 2 == 0 else CLUSTER_B
        for item in rng.choice(cluster, size=rng.integers(3, 7), replace=False):
            rows.append((visitor, int(item), float(rng.integers(1, 4))))
    rows.append((9001, int(CLUSTER_A[0]), 1.0))
    return pd.DataFrame(rows, columns=["visitor_id", "item_id", "weight"])


@pytest.fixture(scope="module")
def fitted() -> candidates.AlsResult:
    return candidates.fit(make_interactions(), SMALL, show_progress=False)


def test_one_item_visitors_are_left_out_of_the_fit_but_still_get_candidates(
    fitted: candidates.AlsResult,
) -> None:
    assert fitted.info["n_visitors"] == 301
    assert fitted.info["n_fitted_visitors"] == 300
    recs = candidates.recommend(fitted, np.array([9001]), show_progress=False)
    # n_candidates items it has not met, and the one it has
    assert len(recs) == SMALL["n_candidates"] + 1
    # folded in from its one item: the rest of its list is that item's cluster
    assert recs["item_id"].isin(CLUSTER_A).all()
    assert recs.loc[recs["item_id"] == CLUSTER_A[0], "is_seen"].all()
    assert recs["is_seen"].sum() == 1
    assert sorted(recs["als_rank"]) == list(range(1, len(recs) + 1))


def test_candidates_stay_in_the_visitors_cluster_and_flag_seen_items(
    fitted: candidates.AlsResult,
) -> None:
    interactions = make_interactions()
    recs = candidates.recommend(fitted, np.array([0, 1]), show_progress=False)
    for visitor, cluster in ((0, CLUSTER_A), (1, CLUSTER_B)):
        mine = recs[recs["visitor_id"] == visitor]
        seen = set(interactions.loc[interactions["visitor_id"] == visitor, "item_id"])
        # every met item and n_candidates unmet ones; the cluster's items first
        assert set(mine.loc[mine["is_seen"], "item_id"]) == seen
        assert (~mine["is_seen"]).sum() == SMALL["n_candidates"]
        assert mine["item_id"].iloc[: len(cluster)].isin(cluster).all()
        assert list(mine["als_rank"]) == list(range(1, len(mine) + 1))
        assert (np.diff(mine["als_score"].to_numpy()) <= 1e-6).all()  # best first


def test_fit_is_reproducible_with_its_seed_whatever_the_row_order() -> None:
    interactions = make_interactions()
    a = candidates.fit(interactions, SMALL, show_progress=False)
    # the mart's rows come back from DuckDB in no set order
    shuffled = interactions.sample(frac=1.0, random_state=7).reset_index(drop=True)
    b = candidates.fit(shuffled, SMALL, show_progress=False)
    np.testing.assert_array_equal(a.model.item_factors, b.model.item_factors)
    np.testing.assert_array_equal(a.visitor_ids, b.visitor_ids)


def test_similar_items_exclude_the_item_itself_and_respect_queries_and_pool(
    fitted: candidates.AlsResult,
) -> None:
    everything = candidates.similar_items(fitted, show_progress=False)
    assert everything["item_id"].nunique() == len(CLUSTER_A) + len(CLUSTER_B)
    assert (everything["item_id"] != everything["similar_item_id"]).all()
    assert (everything.groupby("item_id").size() == SMALL["n_similar"]).all()
    same_cluster = everything["item_id"] // 100 == everything["similar_item_id"] // 100
    assert same_cluster.all()

    # only the asked items (an unknown one skipped), answered from the pool only
    asked = candidates.similar_items(
        fitted,
        query_item_ids=np.array([CLUSTER_A[3], 999_999]),
        pool_item_ids=CLUSTER_A[:8],
        show_progress=False,
    )
    assert set(asked["item_id"]) == {CLUSTER_A[3]}
    assert set(asked["similar_item_id"]) <= set(CLUSTER_A[:8]) - {CLUSTER_A[3]}
    assert list(asked["similarity_rank"]) == [1, 2, 3, 4, 5]

    none = candidates.similar_items(fitted, np.zeros(0, dtype=np.int64), show_progress=False)
    assert none.empty and list(none.columns) == list(everything.columns)


def test_similarity_is_the_cosine_of_the_item_factors_best_first(
    fitted: candidates.AlsResult,
) -> None:
    pairs = candidates.similar_items(fitted, show_progress=False)
    factors = np.asarray(fitted.model.item_factors, dtype=np.float64)
    column = {item: i for i, item in enumerate(fitted.item_ids)}
    a = factors[[column[i] for i in pairs["item_id"]]]
    b = factors[[column[i] for i in pairs["similar_item_id"]]]
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(pairs["similarity"], cosine, atol=1e-5)
    for _, group in pairs.groupby("item_id"):
        assert (np.diff(group["similarity"].to_numpy()) <= 1e-6).all()
        # nothing outside the list is more similar than its last item
        mine = column[group["item_id"].iloc[0]]
        others = np.delete(
            np.arange(len(factors)), [mine, *[column[i] for i in group["similar_item_id"]]]
        )
        rest = factors[others] @ factors[mine]
        rest /= np.linalg.norm(factors[others], axis=1) * np.linalg.norm(factors[mine])
        assert rest.max() <= group["similarity"].min() + 1e-5


def test_unfiltered_search_finds_what_the_filtered_one_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Visitors with few met items are searched unfiltered and lose their met items after;
    the others are filtered in the search: either way each gets its best n unmet items."""
    import scipy.sparse as sp
    from implicit.cpu.topk import topk

    rng = np.random.default_rng(3)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    user = rng.normal(size=(250, 8)).astype(np.float32)
    n_met = rng.choice([0, 1, 5, 40, 120, 295], size=250)  # light, heavy, nearly everything
    rows = np.repeat(np.arange(250), n_met)
    cols = np.concatenate([rng.choice(300, size=k, replace=False) for k in n_met])
    met = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(250, 300))
    monkeypatch.setattr(candidates, "UNFILTERED_MET_ITEMS", 32)
    row, pos, score = candidates._top_unmet(items, user, 10, met)
    ids, scores = topk(items, user, 10, filter_query_items=met)
    found = scores > -np.finfo(np.float32).max  # implicit's padding
    expected = set(zip(np.nonzero(found)[0].tolist(), ids[found].tolist(), strict=True))
    assert set(zip(row.tolist(), pos.tolist(), strict=True)) == expected
    assert not met[row, pos].any()  # never a met item
    assert np.bincount(row, minlength=250)[n_met == 295].tolist() == [5] * (n_met == 295).sum()
    np.testing.assert_allclose(score, np.einsum("ij,ij->i", user[row], items[pos]), rtol=1e-5)


def test_weighting_is_alpha_or_bm25_and_nothing_else() -> None:
    interactions = make_interactions()
    alpha, _, _ = candidates.confidence_matrix(
        interactions, {**candidates.DEFAULT_ALS_PARAMS, "alpha": 10.0}
    )
    assert alpha.max() == pytest.approx(10.0 * interactions["weight"].max())
    bm25, _, _ = candidates.confidence_matrix(
        interactions, {**candidates.DEFAULT_ALS_PARAMS, "weighting": "bm25"}
    )
    assert bm25.nnz == alpha.nnz and not np.allclose(bm25.data, alpha.data)
    with pytest.raises(ValueError, match="unknown weighting"):
        candidates.confidence_matrix(
            interactions, {**candidates.DEFAULT_ALS_PARAMS, "weighting": "tfidf"}
        )


def test_met_items_are_capped_at_the_heaviest_and_kept_to_the_allowed_items(
    fitted: candidates.AlsResult,
) -> None:
    interactions = make_interactions()
    mine = interactions[interactions["visitor_id"] == 0].sort_values("weight", ascending=False)
    capped = candidates.AlsResult(**{**vars(fitted), "params": {**fitted.params, "n_revisit": 2}})
    recs = candidates.recommend(capped, np.array([0]), show_progress=False)
    met = recs.loc[recs["is_seen"], "item_id"]
    assert len(met) == 2 and set(met) <= set(mine["item_id"])
    assert mine.set_index("item_id").loc[list(met), "weight"].min() >= mine["weight"].iloc[2]
    # published lists: met items outside `pool_item_ids` (unavailable) never come back
    allowed = CLUSTER_A[::2]
    recs = candidates.recommend(fitted, np.array([0]), allowed, show_progress=False)
    assert recs["item_id"].isin(allowed).all()


def test_pool_threshold_is_as_strict_as_the_data_allows() -> None:
    counts = np.array([0, 1, 2, 5, 7, 9])  # fitted visitors per item
    params = {**candidates.DEFAULT_ALS_PARAMS, "min_item_visitors": 5}
    assert candidates.pool_threshold(counts, {**params, "min_pool_items": 3}) == 5
    assert candidates.pool_threshold(counts, {**params, "min_pool_items": 4}) == 2
    # fewer items than asked for: every item with a fitted visitor
    assert candidates.pool_threshold(counts, {**params, "min_pool_items": 100}) == 1
    assert candidates.pool_threshold(counts, {**params, "min_item_visitors": 1}) == 1


def test_items_with_few_fitted_visitors_are_left_out_of_the_pool() -> None:
    rare = 555
    interactions = pd.concat(
        [
            make_interactions(),
            pd.DataFrame({"visitor_id": [9002, 9002], "item_id": [CLUSTER_A[0], rare]}).assign(
                weight=1.0
            ),
        ],
        ignore_index=True,
    )
    strict = {**SMALL, "min_item_visitors": 2, "min_pool_items": 5}
    result = candidates.fit(interactions, strict, show_progress=False)
    pool = set(result.item_ids[candidates.item_pool(result)])
    assert pool == set(CLUSTER_A) | set(CLUSTER_B)
    recs = candidates.recommend(result, np.array([9002]), show_progress=False)
    # never as a new item; as an item the visitor met, it comes back (a re-visit candidate)
    assert recs.loc[recs["item_id"] == rare, "is_seen"].tolist() == [True]
    assert recs.loc[~recs["is_seen"], "item_id"].isin(list(pool)).all()
    # a catalogue too small for the threshold keeps every fitted item
    result.params["min_pool_items"] = 1_000
    assert rare in set(result.item_ids[candidates.item_pool(result)])


def test_similar_and_popular_candidates_follow_the_apis_rules() -> None:
    recs = pd.DataFrame(
        {
            "visitor_id": [1, 1, 1, 2],
            "item_id": [1, 2, 3, 5],
            "als_score": [0.9, 0.8, 0.7, 0.5],
            "als_rank": np.array([1, 2, 3, 1], dtype=np.int32),
            "is_seen": [False, False, True, False],
            "source": ["als", "als", "revisit", "als"],
        }
    )
    # visitor 1's latest items are 10, then 11; visitor 2 has none with similar items
    seeds = pd.DataFrame({"visitor_id": [1, 1, 2], "item_id": [10, 11, 99]})
    similar = pd.DataFrame(
        {
            "item_id": [10, 10, 10, 11, 11],
            "similar_item_id": [2, 12, 13, 14, 12],
            "similarity": [0.9, 0.5, 0.4, 0.8, 0.3],
            "similarity_rank": np.array([1, 2, 3, 1, 2], dtype=np.int32),
        }
    )
    pool = candidates.add_sources(recs, seeds, similar, np.array([1, 12, 15, 16]))
    mine = pool[pool["visitor_id"] == 1]
    # similar: summed over the seeds, best first (12 and 14 tie at 0.8 in float32: smaller id
    # first), never an item ALS offered (2); popular: the list less what was offered (1, 12)
    assert mine["item_id"].tolist() == [1, 2, 3, 12, 14, 13, 15, 16]
    assert mine["source"].tolist() == ["als"] * 2 + ["revisit"] + ["similar"] * 3 + ["popular"] * 2
    extra = mine[mine["source"].isin(["similar", "popular"])]
    assert extra["als_score"].isna().all() and extra["als_rank"].isna().all()
    assert extra["is_seen"].isna().all()  # the warehouse looks it up
    assert pool.loc[pool["visitor_id"] == 2, "item_id"].tolist() == [5, 1, 12, 15, 16]


def test_similar_candidates_are_capped_per_visitor() -> None:
    from recsys.candidate_sources import SIMILAR_CANDIDATES, SIMILAR_SEEDS

    recs = pd.DataFrame(
        {
            "visitor_id": [1],
            "item_id": [1],
            "als_score": [0.9],
            "als_rank": np.array([1], dtype=np.int32),
            "is_seen": [False],
            "source": ["als"],
        }
    )
    n_seeds = SIMILAR_SEEDS + 2  # the seeds beyond SIMILAR_SEEDS are not used
    seeds = pd.DataFrame({"visitor_id": [1] * n_seeds, "item_id": 1000 + np.arange(n_seeds)})
    per_seed = SIMILAR_CANDIDATES
    similar = pd.DataFrame(
        {
            "item_id": np.repeat(seeds["item_id"].to_numpy(), per_seed),
            "similar_item_id": 10_000 * (1 + np.repeat(np.arange(n_seeds), per_seed))
            + np.tile(np.arange(per_seed), n_seeds),
            "similarity": np.tile(np.linspace(0.9, 0.1, per_seed), n_seeds),
            "similarity_rank": np.tile(np.arange(1, per_seed + 1), n_seeds),
        }
    )
    pool = candidates.add_sources(recs, seeds, similar, np.zeros(0, dtype=np.int64))
    found = pool.loc[pool["source"] == "similar", "item_id"].to_numpy()
    assert len(found) == SIMILAR_CANDIDATES
    assert (found // 10_000 <= SIMILAR_SEEDS).all()  # from the first SIMILAR_SEEDS seeds only
