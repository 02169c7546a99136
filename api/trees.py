"""The ranker's trees evaluated with numpy: CatBoost's scores for the rows a POST ranks, in a
fraction of its time.

A POST scores ~100 rows. CatBoost takes ~0.36 ms for them on the full snapshot's ranker (111
trees of depth 6), the `Pool` made from the rows included; the trees themselves are a few
thousand comparisons, ~0.06 ms here. Here the model is
read once, at load, into arrays:

- every split of every (oblivious) tree, in the tree's order: a float feature's column and
  border (a row goes right when `value > border`, as CatBoost binarizes; NaN goes left, or
  right where the feature's `nan_value_treatment` is `AsTrue`);
- a split on a CTR (a statistic of a categorical feature's value), or on one of its values
  (one-hot), depends on that value only, so its outcome is tabulated per value, for every
  value the snapshot can ask about: each category of the catalogue, and -1 (an unknown
  item's category). The table is filled by CatBoost itself (`calc_leaf_indexes`: bit `d` of a
  tree's leaf is its `d`-th split), so the hashing and the CTR's priors are CatBoost's, not a
  copy of them;
- the leaf values, exactly as CatBoost holds them (`get_leaf_values`), summed tree after tree
  in the model's order, as CatBoost sums them: the scores are equal, not close.

`compile_ranker` returns None for what it does not cover (a model that is not oblivious,
CTRs of feature combinations, a categorical feature other than the item's categories), and
checks itself against CatBoost on a few hundred rows around every border, NaN included,
before it is used: any difference and it returns None too. The caller then uses CatBoost.
`CompiledRanker.score` returns None for a categorical value it has no row for; again the
caller falls back to CatBoost, for that request.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# the categorical features the snapshot can tabulate: the values they take at request time
# come from the catalogue (`api.features`: an unknown item's are -1)
TABULATED = ("category_id", "root_category_id")
CHECK_ROWS = 512


@dataclass(frozen=True)
class CatTable:
    """A categorical feature's CTR split outcomes: `bits[j, i]` is split `positions[j]`'s
    outcome for the value `values[i]` (sorted)."""

    name: str
    values: np.ndarray  # int64, sorted
    positions: np.ndarray  # int64, into the model's splits
    bits: np.ndarray  # bool, (len(positions), len(values))


@dataclass(frozen=True)
class CompiledRanker:
    numeric_names: list[str]  # the numeric input columns, in CatBoost's order
    float_positions: np.ndarray  # int64: the float splits among all splits
    float_columns: np.ndarray  # int64: each float split's column in the numeric matrix
    float_borders: np.ndarray  # float32, (float splits, 1)
    nan_right: np.ndarray  # bool, (float splits, 1): NaN goes right (AsTrue) at the split
    tables: tuple[CatTable, ...]
    n_trees: int
    depth: int  # every tree's, shorter trees padded with splits that always go left
    leaf_values: np.ndarray  # float64: tree t's leaf i at t * 2**depth + i
    scale: float
    bias: float

    def score(
        self, numeric: np.ndarray, categorical: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        """Scores of the rows: `numeric` is (numeric_names, rows) float32, one feature a row
        (transposed: gathering rows is what numpy does fastest); each tabulated categorical
        column as int64. None when a categorical value has no table row.

        One bool row per split, depth-major (split `d` of tree `t` is row `d * n_trees + t`),
        so that the leaf of every tree and row is one weighted sum over the depth."""
        n = numeric.shape[1]
        bits = np.zeros((self.depth * self.n_trees, n), dtype=bool)
        values = np.take(numeric, self.float_columns, axis=0)
        right = values > self.float_borders
        if self.nan_right.any():
            right |= np.isnan(values) & self.nan_right
        bits[self.float_positions] = right
        for table in self.tables:
            column = categorical[table.name]
            row = np.minimum(np.searchsorted(table.values, column), len(table.values) - 1)
            if not np.array_equal(table.values[row], column):
                return None
            bits[table.positions] = np.take(table.bits, row, axis=1)
        flat = bits.view(np.uint8).reshape(self.depth, self.n_trees * n)
        leaves = np.einsum("d,dx->x", self.powers, flat).reshape(self.n_trees, n)
        # (trees, rows), C-ordered: numpy adds its rows one after another, the trees in the
        # model's order as CatBoost does (a pairwise sum along a row differs in the last bits)
        per_tree = np.take(self.leaf_values, leaves + self.tree_offsets)
        if n == 1:  # a (trees, 1) array is reduced as one contiguous row: pairwise
            per_tree = np.repeat(per_tree, 2, axis=1)
        total = np.add.reduce(per_tree, axis=0)[:n]
        if self.scale != 1.0:
            total = total * self.scale
        return total + self.bias if self.bias else total

    @functools.cached_property
    def powers(self) -> np.ndarray:
        return (1 << np.arange(self.depth)).astype(np.uint8)

    @functools.cached_property
    def tree_offsets(self) -> np.ndarray:
        return (np.arange(self.n_trees, dtype=np.int32) << self.depth)[:, None]


def _distinct(values: Any) -> np.ndarray:
    """The sorted distinct values of an int64 column, and -1. Category ids are small
    non-negative numbers: marked in a mask, ~1 ms for the full catalogue's 417k items where
    np.unique took ~10 ms (held on the serving process's GIL during a swap)."""
    values = np.asarray(values, dtype=np.int64)
    if len(values) and values.min() >= -1 and values.max() < 1 << 24:
        seen = np.zeros(int(values.max()) + 2, dtype=bool)
        seen[values + 1] = True
        seen[0] = True  # -1
        return np.flatnonzero(seen) - 1
    return np.unique(np.concatenate([values, [-1]]))


def _model_json(model: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="recsys-ranker-") as folder:
        path = Path(folder) / "model.json"
        model.save_model(str(path), format="json")
        result: dict[str, Any] = json.loads(path.read_text())
        return result


def compile_ranker(
    model: Any,
    features: list[str],
    cat_features: list[str],
    cat_values: Mapping[str, np.ndarray],
) -> CompiledRanker | None:
    """The model's trees as arrays, or None (see the module doc). `cat_values`: each
    categorical feature's values at request time (-1 is added)."""
    try:
        return _compile(model, features, cat_features, cat_values)
    except Exception as exc:  # a model this does not understand is scored by CatBoost
        log.warning("the ranker is scored by CatBoost: its trees cannot be compiled (%s)", exc)
        return None


def _compile(
    model: Any,
    features: list[str],
    cat_features: list[str],
    cat_values: Mapping[str, np.ndarray],
) -> CompiledRanker | None:
    spec = _model_json(model)
    info = spec["features_info"]
    floats = info.get("float_features") or []
    ctrs = info.get("ctrs") or []
    cats = info.get("categorical_features") or []
    trees = spec.get("oblivious_trees")
    if not trees or any(c not in TABULATED for c in cat_features):
        return None
    numeric_names = [f for f in features if f not in cat_features]
    if [f["feature_id"] for f in floats] != numeric_names:
        return None
    cat_names = [c["feature_id"] for c in cats]
    depth = max(len(t["splits"]) for t in trees)
    n_trees = len(trees)
    # CatBoost numbers every binary feature: each float feature's borders, then each
    # categorical feature's one-hot values, then each CTR's borders
    n_float = sum(len(f.get("borders") or []) for f in floats)
    n_one_hot = sum(len(c.get("values") or []) for c in cats)
    ctr_offsets = n_float + n_one_hot + np.cumsum([0] + [len(c["borders"]) for c in ctrs])
    ctr_feature: list[str] = []
    for ctr in ctrs:
        elements = ctr["elements"]
        if len(elements) != 1 or elements[0]["combination_element"] != "cat_feature_value":
            return None  # a combination: not a function of one value
        ctr_feature.append(cat_names[elements[0]["cat_feature_index"]])

    float_pos: list[int] = []
    float_col: list[int] = []
    float_border: list[float] = []
    nan_right: list[bool] = []
    ctr_pos: dict[str, list[int]] = {name: [] for name in cat_names}
    for t, tree in enumerate(trees):
        splits = tree["splits"]
        for d in range(depth):
            position = d * n_trees + t
            if d >= len(splits):  # a shorter tree: the row stays False, leaf bit 0
                continue
            split = splits[d]
            if split["split_type"] == "FloatFeature":
                feature = floats[split["float_feature_index"]]
                float_pos.append(position)
                float_col.append(numeric_names.index(feature["feature_id"]))
                float_border.append(split["border"])
                nan_right.append(feature.get("nan_value_treatment") == "AsTrue")
            elif split["split_type"] == "OnlineCtr":
                c = int(np.searchsorted(ctr_offsets, split["split_index"], side="right")) - 1
                if not 0 <= c < len(ctrs):
                    return None
                ctr_pos[ctr_feature[c]].append(position)
            elif split["split_type"] == "OneHotFeature":  # a function of one value too
                ctr_pos[cat_names[split["cat_feature_index"]]].append(position)
            else:
                return None  # a split this does not know
    borders32 = np.asarray(float_border, dtype=np.float32)
    if not np.array_equal(borders32.astype(np.float64), np.asarray(float_border)):
        return None  # CatBoost's borders are float32: anything else is not understood here

    leaf_values = np.asarray(model.get_leaf_values(), dtype=np.float64)
    counts = np.asarray(model.get_tree_leaf_counts(), dtype=np.int64)
    if len(counts) != n_trees or counts.sum() != len(leaf_values):
        return None
    padded = np.zeros((n_trees, 1 << depth), dtype=np.float64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for t in range(n_trees):
        if counts[t] != 1 << len(trees[t]["splits"]):
            return None
        padded[t, : counts[t]] = leaf_values[starts[t] : starts[t] + counts[t]]
    scale, biases = spec.get("scale_and_bias") or [1.0, [0.0]]
    if len(biases) != 1:
        return None

    # each categorical feature's distinct values, and -1 (an unknown item's)
    distinct = {name: _distinct(cat_values[name]) for name in cat_features}
    tables = tuple(
        _table(model, features, cat_features, name, distinct[name], ctr_pos[name], n_trees)
        for name in cat_features
        if ctr_pos.get(name)
    )
    compiled = CompiledRanker(
        numeric_names=numeric_names,
        float_positions=np.asarray(float_pos, dtype=np.int64),
        float_columns=np.asarray(float_col, dtype=np.int64),
        float_borders=borders32[:, None],
        nan_right=np.asarray(nan_right, dtype=bool)[:, None],
        tables=tables,
        n_trees=n_trees,
        depth=depth,
        leaf_values=padded.reshape(-1),
        scale=float(scale),
        bias=float(biases[0]),
    )
    return compiled if _agrees(model, compiled, cat_features, floats, distinct) else None


def catboost_pool(
    numeric: np.ndarray,
    numeric_names: list[str],
    cats: Mapping[str, np.ndarray],
    cat_names: list[str],
) -> Any:
    """The CatBoost pool of these rows, as the service hands them to CatBoost: `numeric` is
    (rows, numeric_names) float32, each categorical column int64, given as its decimal text
    (as CatBoost hashes integers). `api.features` scores with it; the tables and the check
    here use it too, so that they see what CatBoost sees when it scores."""
    from catboost import FeaturesData, Pool

    categorical = None
    if cat_names:
        categorical = np.empty((len(numeric), len(cat_names)), dtype=object)
        for j, name in enumerate(cat_names):
            categorical[:, j] = list(map(str, cats[name].tolist()))
    data = FeaturesData(
        num_feature_data=numeric,
        cat_feature_data=categorical,
        num_feature_names=numeric_names,
        cat_feature_names=cat_names or None,
    )
    return Pool(data, thread_count=1)


def _table(
    model: Any,
    features: list[str],
    cat_features: list[str],
    name: str,
    distinct: np.ndarray,
    positions: list[int],
    n_trees: int,
) -> CatTable:
    """The outcomes of the CTR and one-hot splits at `positions` (all on feature `name`) for
    each of its `distinct` values (sorted), read off CatBoost's own leaf indexes for rows that
    differ in that value only."""
    numeric_names = [f for f in features if f not in cat_features]
    numeric = np.zeros((len(distinct), len(numeric_names)), dtype=np.float32)
    cats = {c: (distinct if c == name else np.full(len(distinct), -1)) for c in cat_features}
    leaves = np.asarray(
        model.calc_leaf_indexes(catboost_pool(numeric, numeric_names, cats, cat_features)),
        dtype=np.int64,
    )
    where = np.asarray(positions, dtype=np.int64)
    bit, tree = where // n_trees, where % n_trees
    bits = ((leaves[:, tree] >> bit) & 1).astype(bool).T.copy()
    return CatTable(name=name, values=distinct, positions=where, bits=bits)


def _agrees(
    model: Any,
    compiled: CompiledRanker,
    cat_features: list[str],
    floats: list[dict[str, Any]],
    distinct: Mapping[str, np.ndarray],
) -> bool:
    """Whether the compiled trees give CatBoost's scores, exactly, on CHECK_ROWS rows whose
    numbers sit on, just above and just below the model's borders, or are NaN, and whose
    categories are drawn from each feature's `distinct` values."""
    rng = np.random.default_rng(0)
    n = CHECK_ROWS
    numeric = np.empty((n, len(compiled.numeric_names)), dtype=np.float32)
    for j, feature in enumerate(floats):
        borders = np.asarray(feature.get("borders") or [0.0], dtype=np.float32)
        pick = borders[rng.integers(0, len(borders), n)]
        step = rng.integers(-1, 2, n)  # on the border, or the next float either side
        with np.errstate(over="ignore"):  # the next float below -3.4e38 is -inf: fine here
            below = np.nextafter(pick, np.float32(-np.inf))
            above = np.nextafter(pick, np.float32(np.inf))
        column = np.where(step < 0, below, np.where(step > 0, above, pick))
        column[rng.random(n) < 0.1] = np.nan
        numeric[:, j] = column
    cats = {}
    for name in cat_features:
        values = distinct[name]
        cats[name] = values[rng.integers(0, len(values), n)]
    theirs = np.asarray(
        model.predict(
            catboost_pool(numeric, compiled.numeric_names, cats, cat_features), thread_count=1
        ),
        dtype=np.float64,
    )
    numeric_t = np.ascontiguousarray(numeric.T)
    mine = compiled.score(numeric_t, cats)
    one = compiled.score(numeric_t[:, :1], {name: cats[name][:1] for name in cats})
    if mine is None or one is None or not np.array_equal(one, theirs[:1]):
        mine = None
    if mine is None or not np.array_equal(mine, theirs):
        worst = np.inf if mine is None else float(np.max(np.abs(mine - theirs)))
        log.warning("the compiled ranker differs from CatBoost by %.3g: CatBoost it is", worst)
        return False
    return True
