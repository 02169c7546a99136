"""Ranker: CatBoost (YetiRank) over the `ranking_features` mart, with a small randomized search.

The caller reads the mart and its labels (`ranking_labels`: 1 view, 2 cart, 3 purchase, absent
= 0) and hands this module pandas frames with one row per visitor x candidate item. Nothing here
reads files or the warehouse, except `load`, which reads what `save` wrote.

- `train` sorts rows by group (visitor) before building each `catboost.Pool`, drops groups with
  no positive label (a ranker learns nothing from them, and NDCG is undefined on them) and says
  how many it dropped, then runs a randomized search over depth, learning rate and L2
  regularisation, each trial early-stopped on the validation groups with `NDCG:top=10`. The best
  trial's model is kept (it is already cut at its best iteration).
- `score` predicts for any frame holding the model's feature columns, in the frame's row order.
- `save` / `load` write and read `ranker.cbm` (CatBoost's own format) and `ranker.json` (what the
  model was trained with: params, seed, features, feature version, search log, library version).

Column handling is the same at training and scoring time: numeric and boolean features become
float32 (NaN is fine, CatBoost treats it as missing); categorical features become int64 when
numeric (NaN -> -1, the marts' own "unknown") and strings otherwise; the tags of
`recsys.candidate_sources.CODED_FEATURES` become their numbers. CatBoost hashes an integer
category by its decimal text, so 5 and "5" are the same category.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.candidate_sources import CODED_FEATURES
from recsys.settings import DEFAULT_SEARCH_BUDGET_S, SEED

EVAL_METRIC = "NDCG:top=10"
MODEL_FILE = "ranker.cbm"
METADATA_FILE = "ranker.json"

DEFAULT_PARAMS: dict[str, Any] = {
    # 3 permutations of each group per iteration instead of YetiRank's 10, and 64 borders per
    # feature instead of 254: full scale, 120k rows, validation NDCG@10 0.8234 -> 0.8220 and
    # 27 -> 15 s a trial (test-window NDCG@10 of the run 0.2937 -> 0.2930, inside its noise)
    "loss_function": "YetiRank:permutations=3",
    "border_count": 64,
    "eval_metric": EVAL_METRIC,
    # an upper bound: early stopping on the validation groups picks the count. The validation
    # curve is flat after ~100 trees: full scale, 120k rows, 0.08 x 300 trees reached NDCG@10
    # 0.8233 (best at 275) in 67 s, 0.15 x 150 trees 0.8234 (best at 116) in 26 s
    "iterations": 150,
    "od_type": "Iter",
    "od_wait": 50,
    "depth": 6,
    "learning_rate": 0.15,
    "l2_leaf_reg": 3.0,
    "random_seed": SEED,
    "thread_count": 2,
    "allow_writing_files": False,
}

# what the search varies from the second trial on; keys the caller fixes in `params` are kept
SEARCH_SPACE: dict[str, tuple[float, float]] = {
    "depth": (4, 8),  # integer, uniform, both ends included
    "learning_rate": (0.02, 0.3),  # log-uniform
    "l2_leaf_reg": (1.0, 30.0),  # log-uniform
}


@dataclass
class RankerResult:
    """A trained ranker and everything needed to explain and reproduce it.

    `features` is the model's input column order (the given features, then any categorical
    feature not already among them); `best_valid_ndcg10` is CatBoost's `NDCG:top=10` (graded:
    gain = label) at the best iteration of the best trial on the validation groups that have a
    positive label. It was used for early stopping and for choosing the trial, so it is an
    optimistic estimate: judge the model on a later window.
    """

    model: Any  # catboost.CatBoostRanker
    params: dict[str, Any]
    seed: int
    features: list[str]
    cat_features: list[str]
    best_valid_ndcg10: float
    search_log: list[dict[str, Any]]
    n_train_groups: int
    n_valid_groups: int
    dropped_groups: dict[str, int] = field(default_factory=dict)  # {"train": n, "valid": n}
    train_seconds: float = 0.0


def model_columns(features: Sequence[str], cat_features: Sequence[str]) -> list[str]:
    """The model's input columns: the features, then categorical ones not already listed."""
    return list(features) + [c for c in cat_features if c not in features]


# from this many rows, categorical columns are handed to CatBoost as pandas categoricals
CATEGORICAL_DTYPE_FROM = 4_096


def feature_frame(
    df: pd.DataFrame, columns: Sequence[str], cat_features: Sequence[str]
) -> pd.DataFrame:
    """The model's input columns of `df` in order, typed the way CatBoost is always given them.

    Categorical values are integers (or strings); from CATEGORICAL_DTYPE_FROM rows on they go
    in a pandas categorical, so that CatBoost converts and hashes each distinct value once
    instead of once per row (500k rows: 0.34 -> 0.05 s to build the Pool, the same values and
    predictions). A request's ~150 rows keep plain arrays, where the categorical would cost more
    than it saves."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"missing feature columns: {missing}")
    cats = set(cat_features)
    data: dict[str, np.ndarray] = {}
    for name in columns:
        col = df[name]
        if name in CODED_FEATURES:
            data[name] = _coded(CODED_FEATURES[name], col)
            continue
        if name in cats:
            data[name] = _categorical(col)
            continue
        try:
            data[name] = col.to_numpy(dtype=np.float32, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"feature {name!r} ({col.dtype}) is not numeric or boolean; "
                "list it in cat_features if it is a category"
            ) from exc
    frame = pd.DataFrame(data, columns=list(columns))
    if len(frame) >= CATEGORICAL_DTYPE_FROM:
        for name in cats & set(columns):
            frame[name] = frame[name].astype("category")
    return frame


def _coded(code: Callable[[object], np.ndarray], col: pd.Series) -> np.ndarray:
    """`code` (a value-by-value mapping) of the column's values; from CATEGORICAL_DTYPE_FROM
    rows on, of each distinct value once (a few tags over 500k rows: 0.1 -> 0.01 s)."""
    if len(col) < CATEGORICAL_DTYPE_FROM:
        return np.asarray(code(col.to_numpy(dtype=object)))
    positions, distinct = pd.factorize(col, use_na_sentinel=False)
    values = np.asarray(code(np.asarray(distinct, dtype=object)))
    return values[positions]


def _categorical(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col.dtype):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        values = np.where(np.isnan(values), -1.0, values)
        if not np.array_equal(values, np.floor(values)):
            raise ValueError(f"categorical feature {col.name!r} holds non-integer numbers")
        return values.astype(np.int64)
    return col.astype(object).where(col.notna(), "-1").astype(str).to_numpy(dtype=object)


def _prepare_groups(
    df: pd.DataFrame, columns: list[str], label_col: str, group_col: str
) -> tuple[pd.DataFrame, int, int]:
    """Rows of groups with a positive label, sorted by group id; (rows, kept, dropped)."""
    frame = df[[group_col, label_col, *[c for c in columns if c not in (group_col, label_col)]]]
    labels = frame[label_col].fillna(0).astype(np.float64)  # absent from ranking_labels = 0
    mask = (labels.groupby(frame[group_col], sort=False).transform("max") > 0).to_numpy()
    n_groups = frame[group_col].nunique()
    kept = frame.iloc[np.flatnonzero(mask)].copy()
    kept[label_col] = labels.to_numpy()[mask]
    kept = kept.sort_values(group_col, kind="stable")
    n_kept = kept[group_col].nunique()
    return kept, n_kept, n_groups - n_kept


def _pool(
    rows: pd.DataFrame, columns: list[str], cat_features: list[str], label_col: str, group_col: str
) -> Any:
    from catboost import Pool

    return Pool(
        feature_frame(rows, columns, cat_features),
        label=rows[label_col].to_numpy(dtype=np.float64),
        group_id=rows[group_col].to_numpy(),
        cat_features=cat_features,
    )


def sample_params(rng: np.random.Generator, fixed: Sequence[str] = ()) -> dict[str, Any]:
    """One draw from SEARCH_SPACE, as plain Python numbers, leaving out the `fixed` keys."""
    lo_d, hi_d = SEARCH_SPACE["depth"]
    lo_lr, hi_lr = SEARCH_SPACE["learning_rate"]
    lo_l2, hi_l2 = SEARCH_SPACE["l2_leaf_reg"]
    # draw every key even when fixed, so the sequence of draws does not depend on `fixed`
    draw = {
        "depth": int(rng.integers(int(lo_d), int(hi_d) + 1)),
        "learning_rate": round(math.exp(rng.uniform(math.log(lo_lr), math.log(hi_lr))), 4),
        "l2_leaf_reg": round(math.exp(rng.uniform(math.log(lo_l2), math.log(hi_l2))), 3),
    }
    return {k: v for k, v in draw.items() if k not in fixed}


def _best_score(model: Any) -> float:
    validation = model.evals_result_.get("validation", {})
    key = next((k for k in validation if k.split(";")[0] == EVAL_METRIC), None)
    if key is None:
        raise RuntimeError(f"CatBoost recorded no {EVAL_METRIC} on the validation set")
    return float(validation[key][model.best_iteration_])


def train(
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    features: Sequence[str],
    cat_features: Sequence[str],
    *,
    label_col: str = "label",
    group_col: str = "visitor_id",
    params: dict[str, Any] | None = None,
    search_budget_s: float = DEFAULT_SEARCH_BUDGET_S,
    n_trials: int = 8,
    seed: int = SEED,
    progress: Callable[[str], None] = print,
) -> RankerResult:
    """Train a YetiRank ranker with a randomized search bounded by `search_budget_s`.

    Trial 1 uses DEFAULT_PARAMS overridden by `params`; trials 2..n_trials add a draw from
    SEARCH_SPACE (numpy Generator(seed)) for the keys `params` does not fix. The first trial
    always runs to its end; a further one starts only if the slowest trial so far would still
    end within `search_budget_s` seconds of search, and is stopped at that deadline if it runs
    longer (keeping its best iteration so far), so the budget bounds the search unless the
    first trial alone exceeds it. Every trial early-stops on `valid_df` with NDCG@10; the best
    trial's model is kept as is. CatBoost's seed is `seed`.
    """
    from catboost import CatBoostRanker

    t_start = time.perf_counter()
    fixed = dict(params or {})
    base = {**DEFAULT_PARAMS, **fixed, "random_seed": seed}
    columns = model_columns(features, cat_features)
    cats = list(cat_features)

    train_rows, n_train, dropped_train = _prepare_groups(train_df, columns, label_col, group_col)
    valid_rows, n_valid, dropped_valid = _prepare_groups(valid_df, columns, label_col, group_col)
    if dropped_train or dropped_valid:
        progress(
            f"ranker: dropped {dropped_train} train and {dropped_valid} validation groups "
            "with no positive label"
        )
    if n_train == 0:
        raise ValueError("ranker: no training group has a positive label")
    if n_valid == 0:
        raise ValueError("ranker: no validation group has a positive label")
    train_pool = _pool(train_rows, columns, cats, label_col, group_col)
    valid_pool = _pool(valid_rows, columns, cats, label_col, group_col)
    progress(
        f"ranker: {len(train_rows)} rows in {n_train} train groups, "
        f"{len(valid_rows)} rows in {n_valid} validation groups, {len(columns)} features"
    )

    rng = np.random.default_rng(seed)
    searchable = [k for k in SEARCH_SPACE if k not in fixed]
    n_trials = max(1, n_trials if searchable else 1)
    trials: list[dict[str, Any]] = [{}] + [
        sample_params(rng, fixed=list(fixed)) for _ in range(n_trials - 1)
    ]

    search_log: list[dict[str, Any]] = []
    best_model: Any = None
    best_params: dict[str, Any] = {}
    best_score, best_trial = -math.inf, 0
    t_search = time.perf_counter()
    for k, drawn in enumerate(trials, start=1):
        slowest = max((row["seconds"] for row in search_log), default=0.0)
        if k > 1 and time.perf_counter() - t_search + slowest > search_budget_s:
            progress(f"ranker: search budget of {search_budget_s:g} s spent after {k - 1} trials")
            break
        trial_params = {**base, **drawn}
        t0 = time.perf_counter()
        model = CatBoostRanker(**trial_params)
        deadline = None if k == 1 else _Deadline(t_search + search_budget_s)
        model.fit(
            train_pool,
            eval_set=valid_pool,
            use_best_model=True,
            verbose=False,
            callbacks=[deadline] if deadline else None,
        )
        score_k = _best_score(model)
        seconds = time.perf_counter() - t0
        shown = {key: trial_params[key] for key in SEARCH_SPACE}
        stopped = bool(deadline and deadline.reached)
        search_log.append(
            {
                "trial": k,
                "params": shown,
                "score": score_k,
                "best_iteration": int(model.best_iteration_),
                "seconds": round(seconds, 3),
                "stopped_at_budget": stopped,
            }
        )
        progress(
            f"ranker trial {k}/{n_trials}: "
            + " ".join(f"{key}={value}" for key, value in shown.items())
            + f" -> NDCG@10 {score_k:.4f} (best iteration {model.best_iteration_}) "
            f"in {seconds:.1f} s" + (" (stopped at the search budget)" if stopped else "")
        )
        if best_model is None or score_k > best_score or math.isnan(best_score):
            best_model, best_params, best_score, best_trial = model, trial_params, score_k, k

    progress(f"ranker: kept trial {best_trial} with validation NDCG@10 {best_score:.4f}")
    return RankerResult(
        model=best_model,
        params=best_params,
        seed=seed,
        features=columns,
        cat_features=cats,
        best_valid_ndcg10=best_score,
        search_log=search_log,
        n_train_groups=n_train,
        n_valid_groups=n_valid,
        dropped_groups={"train": dropped_train, "valid": dropped_valid},
        train_seconds=time.perf_counter() - t_start,
    )


class _Deadline:
    """CatBoost callback: stop training once `time.perf_counter()` passes `at`."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.reached = False

    def after_iteration(self, info: Any) -> bool:
        self.reached = time.perf_counter() >= self.at
        return not self.reached  # False stops the training


def _model_of(result_or_model: RankerResult | Any) -> Any:
    return result_or_model.model if isinstance(result_or_model, RankerResult) else result_or_model


def score(
    result_or_model: RankerResult | Any, df: pd.DataFrame, batch_rows: int = 1_000_000
) -> np.ndarray:
    """Ranker scores for the rows of `df`, in its row order (higher = better).

    The feature order and categorical columns come from the model itself, so a model returned
    by `load` scores the same way as the one `train` returned. Rows are scored `batch_rows` at
    a time to bound memory; an empty frame gives an empty array.
    """
    from catboost import Pool

    model = _model_of(result_or_model)
    columns = list(model.feature_names_)
    cats = [columns[i] for i in model.get_cat_feature_indices()]
    if len(df) == 0:
        return np.zeros(0, dtype=np.float64)
    parts = [
        model.predict(
            Pool(feature_frame(df.iloc[lo : lo + batch_rows], columns, cats), cat_features=cats)
        )
        for lo in range(0, len(df), batch_rows)
    ]
    return np.concatenate(parts).astype(np.float64)


def feature_importance(result_or_model: RankerResult | Any) -> pd.DataFrame:
    """CatBoost's PredictionValuesChange per feature (sums to 100), largest first.

    (The default importance of a ranking loss, LossFunctionChange, needs a data set; this one
    is read off the trees.)
    """
    model = _model_of(result_or_model)
    values = model.get_feature_importance(type="PredictionValuesChange")
    out = pd.DataFrame({"feature": list(model.feature_names_), "importance": values})
    return out.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


def plot_feature_importance(importance: pd.DataFrame, path: str | Path, top: int = 25) -> Path:
    """A horizontal bar chart of the `top` most important features, written as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = importance.head(top).iloc[::-1]  # largest at the top of the chart
    fig = Figure(figsize=(7.0, 0.3 * len(shown) + 1.2))
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state or a display
    ax = fig.add_subplot()
    ax.barh(shown["feature"].astype(str), shown["importance"], color="#4c72b0")
    ax.set_xlabel("importance (PredictionValuesChange)")
    ax.set_title("Ranker feature importance")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def save(
    result: RankerResult,
    directory: str | Path,
    feature_version: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `ranker.cbm` and `ranker.json` into `directory` (made if needed); return it."""
    import catboost

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result.model.save_model(str(directory / MODEL_FILE), format="cbm")
    metadata = {
        "model_file": MODEL_FILE,
        "feature_version": feature_version,
        "params": result.params,
        "seed": result.seed,
        "features": result.features,
        "cat_features": result.cat_features,
        "best_valid_ndcg10": result.best_valid_ndcg10,
        "search_log": result.search_log,
        "n_train_groups": result.n_train_groups,
        "n_valid_groups": result.n_valid_groups,
        "dropped_groups": result.dropped_groups,
        "train_seconds": round(result.train_seconds, 3),
        "catboost_version": catboost.__version__,
        "extra": extra or {},
    }
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return directory


def load(directory: str | Path) -> tuple[Any, dict[str, Any]]:
    """(model, metadata) from what `save` wrote; the model's features must match the metadata."""
    from catboost import CatBoostRanker

    directory = Path(directory)
    metadata = json.loads((directory / METADATA_FILE).read_text())
    model = CatBoostRanker()
    model.load_model(str(directory / metadata.get("model_file", MODEL_FILE)), format="cbm")
    if list(model.feature_names_) != metadata["features"]:
        raise ValueError(
            f"{directory}: the model's features {model.feature_names_} differ from "
            f"{METADATA_FILE}'s {metadata['features']}"
        )
    return model, metadata
