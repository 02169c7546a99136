"""Train, evaluate and publish: the stages of `recsys train|evaluate|publish|run`.

One code path for the command line and the Airflow DAGs. Everything is read from dbt marts; the
ALS outputs are written back to the warehouse as the `ml` source; the ranker, the report and
the metrics land under `RECSYS_DATA_DIR` (`models/`, `reports/`), snapshots in the lake.

- `train`: features as of t1 with labels from (t1, t2]; ALS; ranking features; a CatBoost
  ranker with a small randomized search validated on held-out visitors; split-conformal
  calibration on other held-out visitors. It is a composition of `training_windows`,
  `steps.build_features`, `fit_training_candidates`, `steps.build_ranking` and `train_ranker`,
  which the training DAG runs as tasks of their own (its dbt builds as Cosmos task groups, with
  the vars of `training_dbt_vars`).
- `evaluate`: features and ALS recomputed as of t2; the three models and the session method
  scored on (t2, end]; `reports/metrics.json` and a Markdown report with plots.
- `publish`: features and ALS as of the latest event, ranked by the trained ranker, written as
  a snapshot through the quality gate (`gate_reasons` asks the gate without publishing).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models_ml import conformal, evaluation, ranker, report, steps
from models_ml.metrics import bootstrap_intervals
from models_ml.metrics import evaluate as mean_metrics
from models_ml.publish import GATE_BASELINES, GateRefused, Published, gate, gate_notes, publish
from models_ml.snapshot import build_snapshot
from recsys.errors import NotEnoughData, NotReady
from recsys.ingest import require_events
from recsys.lake import Lake
from recsys.settings import DEFAULT_SEARCH_BUDGET_S, SEED, Settings
from recsys.snapshots import latest_manifest

ALPHA = 0.1  # conformal: prediction sets at level 1 - alpha
NEGATIVES_PER_VISITOR = 30
MAX_GROUPS = {"fit": 4_000, "valid": 1_500}  # visitors: YetiRank's time grows with them
# visitors of the label window given candidates for training: about a third of them have a
# positive among their candidates, enough for MAX_GROUPS and a calibration part of ~2,500
# visitors with a positive; scoring every visitor of the window would only cost time
MAX_TRAIN_VISITORS = 40_000


def sample_negatives(
    frame: pd.DataFrame, per_visitor: int, seed: int, max_groups: int | None = None
) -> pd.DataFrame:
    """Visitors that have a positive (at most `max_groups`, drawn at random), each with all
    positives and up to `per_visitor` negatives."""
    has_positive = frame.groupby("visitor_id")["label"].transform("max") > 0
    frame = frame[has_positive]
    visitors = frame["visitor_id"].unique()
    if max_groups is not None and len(visitors) > max_groups:
        chosen = np.random.default_rng(seed).choice(visitors, max_groups, replace=False)
        frame = frame[frame["visitor_id"].isin(chosen)]
    draw = np.random.default_rng(seed).random(len(frame))
    order = frame.assign(_draw=np.where(frame["label"] > 0, -1.0, draw))
    order = order.sort_values(["visitor_id", "_draw"], kind="stable")
    keep = (order["label"] > 0) | (order.groupby("visitor_id").cumcount() < per_visitor)
    kept = order[keep].drop(columns="_draw")
    return kept.sort_values(["visitor_id", "als_rank"], kind="stable")


def sampled_groups(
    part: np.ndarray, labelled: np.ndarray, seed: int, max_groups: int | None = None
) -> np.ndarray:
    """The visitors of `part` (sorted ids) that `sample_negatives` keeps of a frame of theirs:
    those with a positive (`labelled`), at most `max_groups` drawn as it draws them; so that
    only their rows need reading."""
    visitors = part[np.isin(part, labelled)]
    if max_groups is not None and len(visitors) > max_groups:
        visitors = np.random.default_rng(seed).choice(visitors, max_groups, replace=False)
    return np.asarray(visitors, dtype=np.int64)


def _paths(settings: Settings) -> dict[str, Path]:
    models = settings.models_dir
    return {
        "models": models,
        "ranker": settings.ranker_dir,
        "calibration": models / "conformal.json",
        # the same ranker's sets recalibrated on the test window by `evaluate` (see there)
        "recalibration": models / "conformal_recent.json",
        "training": models / "training.json",
        "reports": settings.reports_dir,
        "metrics": settings.metrics_path,
    }


def training_windows(
    settings: Settings, say: steps.Say = print, test_days: float = 14, label_days: float = 14
) -> steps.Windows:
    """The three windows of a training run, ending at the latest event in the lake."""
    win = steps.windows(settings, test_days, label_days)
    say(f"windows: t1 {win.t1}, t2 {win.t2}, end {win.end}")
    return win


def _require(settings: Settings, paths: dict[str, Path], names: tuple[str, ...], step: str) -> None:
    """NoEvents when the lake is empty, else NotReady naming the step to run first when one
    of the files a step reads is missing (a clear line instead of a FileNotFoundError)."""
    missing = [paths[n] for n in names if not paths[n].exists()]
    if missing:
        require_events(Lake.from_settings(settings))
        raise NotReady(f"{missing[0]} does not exist yet: run `{step}` first")


def windows_from_dict(payload: dict[str, str]) -> steps.Windows:
    """`Windows` back from `Windows.to_dict()` (training.json, an Airflow XCom)."""
    return steps.Windows(
        **{k: pd.Timestamp(payload[k]).to_pydatetime() for k in ("t1", "t2", "end")}
    )


def training_dbt_vars(win: steps.Windows) -> dict[str, str]:
    """The dbt vars of the training builds (features as of t1, labels to t2), spelt exactly as
    `steps.build_features` and `steps.build_ranking` pass them."""
    return {"cutoff_at": steps._ts(win.t1), "label_end_at": steps._ts(win.t2)}


def fit_training_candidates(
    settings: Settings, win: steps.Windows, say: steps.Say = print
) -> dict[str, Any]:
    """ALS on the features as of t1; candidates for (a sample of) the visitors of (t1, t2].

    Returns what training.json records of the fit: plain JSON, so an Airflow XCom carries it.
    """
    t0 = time.perf_counter()
    # no similar items: the ranker does not use them (evaluation and publishing do)
    als = steps.fit_candidates(
        settings, say, label_window=True, max_visitors=MAX_TRAIN_VISITORS, seed=SEED
    )
    return {
        "params": als.params,
        "seed": als.seed,
        **als.info,
        "fit_seconds": round(als.fit_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def train_ranker(
    settings: Settings,
    win: steps.Windows,
    als: dict[str, Any],
    say: steps.Say = print,
    search_budget_s: float = DEFAULT_SEARCH_BUDGET_S,
) -> dict[str, Any]:
    """The CatBoost ranker on the ranking features just built, its conformal calibration, and
    models/training.json (`als`: what `fit_training_candidates` returned)."""
    paths = _paths(settings)
    info = steps.build_info(settings)  # the training build's, as steps.build_features returned
    with steps.timed(say, "visitors split"):
        groups = steps.ranking_groups(settings)
        visitors = groups["visitor_id"].to_numpy(np.int64)
        labelled = visitors[groups["n_positive"].to_numpy() > 0]
        if len(labelled) < 3:
            raise NotEnoughData(
                f"only {len(labelled)} visitors have a positive among their candidates in the "
                "label window: at least 3 are needed to train, validate and calibrate the ranker "
                "(more events, or a longer label window)"
            )
        fit_part, valid_part, calib_part = steps.split_visitors(
            visitors, (0.6, 0.2, 0.2), SEED, labelled=labelled
        )
        # YetiRank's cost grows with the pairs of a group: train on every positive and a
        # sample of the negatives (the calibration part keeps every candidate, as scoring will)
        chosen = {
            "fit": sampled_groups(fit_part, labelled, SEED, MAX_GROUPS["fit"]),
            "valid": sampled_groups(valid_part, labelled, SEED, MAX_GROUPS["valid"]),
        }
    # only the rows of the visitors used: a third of the frame at full scale
    with steps.timed(say, "ranking frame read"):
        frame = steps.ranking_frame(
            settings, np.concatenate([chosen["fit"], chosen["valid"], calib_part])
        )
    features = steps.feature_columns(frame)
    with steps.timed(say, "negatives sampled"):
        in_part = {
            name: sample_negatives(
                frame[frame["visitor_id"].isin(chosen[name])],
                NEGATIVES_PER_VISITOR,
                SEED,
                MAX_GROUPS[name],
            )
            for name in ("fit", "valid")
        }
        in_part["calib"] = frame[frame["visitor_id"].isin(calib_part)]
        del frame
    say(
        f"ranking frame: {int(groups['n_candidates'].sum()):,} candidates of "
        f"{len(groups):,} visitors, {int(groups['n_positive'].sum()):,} with a label"
    )
    t0 = time.perf_counter()
    result = ranker.train(
        in_part["fit"],
        in_part["valid"],
        features,
        list(steps.CATEGORICAL_FEATURES),
        search_budget_s=search_budget_s,
        seed=SEED,
        progress=lambda m: say(f"  {m}"),
    )
    ranker_seconds = time.perf_counter() - t0
    ranker.save(result, paths["ranker"], info["feature_version"])
    calib = in_part["calib"]
    with steps.timed(say, f"conformal calibration on {calib['visitor_id'].nunique():,} visitors"):
        calib_scores = ranker.score(result, calib)
        calibrator = conformal.calibrate(
            calib_scores,
            calib["visitor_id"].to_numpy(),
            calib["label"].to_numpy(),
            alpha=ALPHA,
            seed=SEED,
        )
    steps.write_json(paths["calibration"], calibrator.to_dict())
    paths["recalibration"].unlink(missing_ok=True)  # belonged to the previous ranker
    # the search chose its trial on the validation visitors, so their figure flatters it; the
    # figure reported comes from the calibration visitors, which no choice has seen
    heldout = evaluation_of(calib, calib_scores)
    training = {
        "windows": win.to_dict(),
        "feature_build": info,
        "als": als,
        "ranker": {
            # CatBoost's graded NDCG@10 on the visitors the search chose by: optimistic
            "best_valid_ndcg@10": result.best_valid_ndcg10,
            # binary NDCG@10 over every candidate of visitors no choice was made on
            "heldout_ndcg@10": heldout["ndcg@10"],
            "heldout_visitors": heldout["n_visitors"],
            "seconds": round(ranker_seconds, 2),
            "n_trials": len(result.search_log),
        },
        "conformal": {"alpha": ALPHA, "prediction_set_size": calibrator.prediction_set_size},
    }
    steps.write_json(paths["training"], training)
    with steps.timed(say, "feature importance written"):
        importance = ranker.feature_importance(result)
        paths["reports"].mkdir(parents=True, exist_ok=True)
        importance.to_csv(paths["reports"] / "feature_importance.csv", index=False)
        ranker.plot_feature_importance(importance, paths["reports"] / "feature_importance.png")
    say(
        f"ranker: NDCG@10 {heldout['ndcg@10']:.4f} on {heldout['n_visitors']:,} held-out "
        f"visitors (the search's own validation figure: {result.best_valid_ndcg10:.4f}, "
        f"{len(result.search_log)} trials, {ranker_seconds:.1f}s)"
    )
    return training


def evaluation_of(frame: pd.DataFrame, scores: np.ndarray) -> dict[str, Any]:
    """NDCG@10 of `scores` over the visitors of `frame` that have a positive label (relevant:
    label > 0), every candidate ranked."""
    positives = frame[frame["label"] > 0]
    truth: dict[int, set[int]] = {}
    for visitor, item in zip(positives["visitor_id"], positives["item_id"], strict=True):
        truth.setdefault(int(visitor), set()).add(int(item))
    lists = evaluation.ranked_lists(frame, scores, max(evaluation.KS))
    means = mean_metrics(lists, truth, evaluation.KS)
    return {"ndcg@10": means.get("ndcg@10", 0.0), "n_visitors": len(truth)}


def train(
    settings: Settings,
    say: steps.Say = print,
    search_budget_s: float = DEFAULT_SEARCH_BUDGET_S,
    test_days: float = 14,
    label_days: float = 14,
) -> dict[str, Any]:
    """Fit ALS and the ranker as of t1, validated on (t1, t2]; calibrate conformal sets."""
    win = training_windows(settings, say, test_days, label_days)
    steps.build_features(settings, win.t1, win.t2, say)
    als = fit_training_candidates(settings, win, say)
    steps.build_ranking(settings, win.t1, win.t2, say)
    return train_ranker(settings, win, als, say, search_budget_s)


def evaluate(settings: Settings, say: steps.Say = print) -> dict[str, Any]:
    """Score popularity, ALS, ALS + CatBoost and the session method on (t2, end]."""
    paths = _paths(settings)
    _require(settings, paths, ("training", "ranker", "calibration"), "recsys train")
    training = json.loads(paths["training"].read_text())
    win = windows_from_dict(training["windows"])
    model, _ = ranker.load(paths["ranker"])
    calibrator = conformal.ConformalCalibrator.from_dict(
        json.loads(paths["calibration"].read_text())
    )
    info = steps.build_features(settings, win.t2, win.end, say)
    with steps.connect(settings) as con:
        session_items = evaluation.session_query_items(con)
    steps.fit_candidates(settings, say, label_window=True, similar_queries=session_items)
    steps.build_ranking(settings, win.t2, win.end, say)
    frame = steps.scored_candidates(settings, model, say)
    scores = frame["score"].to_numpy()
    with steps.connect(settings) as con, steps.timed(say, "session method scored"):
        truth = evaluation.truth_from_labels(con)
        catalogue = con.execute(
            "select count(*) from item_features where n_events_all > 0"
        ).fetchone()
        session = evaluation.session_next_item(con)
        seen = evaluation.seen_items(con, list(truth))
        # popularity without the met items needs the list to reach past them
        longest = max((len(items) for items in seen.values()), default=0)
        popularity = evaluation.popular_items(con, max(evaluation.KS) + longest)
    with steps.timed(say, "models compared"):
        models, n_eval, per_visitor = evaluation.compare_models(
            frame, scores, popularity, truth, int(catalogue[0]) if catalogue else 0, seen
        )
    with steps.timed(say, "95% bootstrap intervals over visitors"):
        pairs = [("als_catboost", b) for b in (*GATE_BASELINES, "als")]
        intervals, differences = bootstrap_intervals(per_visitor, pairs, seed=SEED)
        del per_visitor
        pool = evaluation.pool_recall(frame, truth, seen)
    with steps.timed(say, "conformal sets recalibrated on the test window and measured"):
        recent_part = np.isin(frame["visitor_id"].to_numpy(), recent_visitors(frame))
        recent, coverage, shifted = recalibrate(calibrator, frame, scores, recent_part)
    steps.write_json(paths["recalibration"], recent.to_dict())
    metrics = {
        "protocol": {
            **win.to_dict(),
            "n_eval_visitors": n_eval,
            "n_test_window_visitors": len(truth),
            "feature_version": info["feature_version"],
            "dbt_invocation_id": info["dbt_invocation_id"],
            "relevant": "items viewed, carted or bought in (t2, end]",
        },
        "models": models,
        "intervals": intervals,
        "differences": differences,
        "pool": pool,
        "session": session,
        "conformal": {
            "method": (
                "split conformal, rank of a relevant candidate, one per visitor; calibrated on "
                "half of the test window's visitors, measured on the other half"
            ),
            "nominal": coverage["nominal"],
            "empirical_coverage": coverage["empirical_coverage"],
            "n_groups": coverage["n_groups"],
            "n_calibration": coverage["n_calibration"],
            "prediction_set_size": recent.prediction_set_size,
            # the training window's calibration on the same visitors: the shift it corrects
            "training_window": {
                "empirical_coverage": shifted["empirical_coverage"],
                "prediction_set_size": calibrator.prediction_set_size,
            },
        },
        "training": training,
    }
    steps.write_json(paths["metrics"], metrics)
    with steps.timed(say, "report written"):
        measured = ~recent_part
        curve = _calibration_curve(recent, frame[measured], scores[measured])
        report.write(paths["reports"], metrics, curve)
    say(report.metric_table(metrics))
    return metrics


def recent_visitors(frame: pd.DataFrame) -> np.ndarray:
    """The half of the test window's visitors (seeded) that recalibrates the conformal sets."""
    return steps.split_visitors(frame["visitor_id"].to_numpy(), (0.5, 0.5), SEED)[0]


def recalibrate(
    calibrator: conformal.ConformalCalibrator,
    frame: pd.DataFrame,
    scores: np.ndarray,
    part: np.ndarray | None = None,
) -> tuple[conformal.ConformalCalibrator, dict[str, Any], dict[str, Any]]:
    """The ranker's conformal sets calibrated again on half of the test window's visitors, and
    the coverage of those sets and of the training window's (`calibrator`) on the other half.

    Calibration points must be exchangeable with the visitors the sets are used for. Those of
    the training window are not quite: the visitors after t2, ranked on features as of t2 with
    candidates of a refit ALS, put their relevant items at other ranks (full scale, one seed:
    0.886 against a nominal 0.900, where sets calibrated on the test window cover 0.903). The
    test window is the latest labelled one, the closest there is to the visitors a published
    snapshot serves, so the sets published are calibrated there, and measured on visitors they
    were not calibrated on. Without a relevant candidate in the calibration half, the training
    window's sets stay. `part`: which rows are those of `recent_visitors`, when the caller has
    them already.
    """
    visitors = frame["visitor_id"].to_numpy()
    labels = frame["label"].to_numpy()
    if part is None:  # the rows of `recent_visitors`
        part = np.isin(visitors, recent_visitors(frame))
    try:
        recent = conformal.calibrate(
            scores[part], visitors[part], labels[part], alpha=calibrator.alpha, seed=SEED
        )
    except ValueError:  # no visitor of that half has a relevant candidate (tiny data)
        recent = calibrator
    rest = ~part
    coverage = conformal.coverage(recent, scores[rest], visitors[rest], labels[rest], seed=SEED)
    shifted = conformal.coverage(calibrator, scores[rest], visitors[rest], labels[rest], SEED)
    return recent, coverage, shifted


def _calibration_curve(
    calibrator: conformal.ConformalCalibrator, frame: pd.DataFrame, scores: np.ndarray
) -> dict[str, list[float]] | None:
    """Calibrated confidence per rank beside the share observed on the test window."""
    observed = conformal.relevant_ranks(
        scores, frame["visitor_id"].to_numpy(), frame["label"].to_numpy(), seed=SEED
    )
    if not len(observed.ranks):
        return None
    ranks = np.arange(1, calibrator.max_candidates + 1)
    sorted_ranks = np.sort(observed.ranks)
    empirical = np.searchsorted(sorted_ranks, ranks, side="right") / len(sorted_ranks)
    return {
        "rank": ranks.tolist(),
        "calibrated": calibrator.confidences(ranks).tolist(),
        "empirical": empirical.tolist(),
    }


def gate_reasons(settings: Settings) -> list[str]:
    """Why the quality gate would refuse a snapshot of the last evaluation (empty: it would
    pass) against the published snapshot: the check `publish` makes, without publishing."""
    metrics = json.loads(_paths(settings)["metrics"].read_text())
    return list(gate(metrics, latest_manifest(Lake.from_settings(settings))))


def publish_snapshot(settings: Settings, say: steps.Say = print, force: bool = False) -> Published:
    """Features and ALS as of the latest event, ranked, written as a snapshot (gated).

    The gate is asked first, so that a refused model costs no build; `publish` asks it again
    against whatever is published by then.
    """
    paths = _paths(settings)
    _require(settings, paths, ("ranker", "calibration"), "recsys train")
    _require(settings, paths, ("metrics",), "recsys evaluate")
    metrics = json.loads(paths["metrics"].read_text())
    reasons = gate_reasons(settings)
    for note in gate_notes(metrics):
        say(f"quality gate: {note}")
    if reasons and not force:
        say(
            f"quality gate refused the snapshot: {'; '.join(reasons)} "
            "(use --force to publish anyway)"
        )
        raise GateRefused("; ".join(reasons))
    model, meta = ranker.load(paths["ranker"])
    # the sets recalibrated on the test window when `evaluate` made them for this ranker
    calibration = paths["recalibration"]
    if not calibration.exists():
        calibration = paths["calibration"]
    calibrator = conformal.ConformalCalibrator.from_dict(json.loads(calibration.read_text()))
    info = steps.build_features(settings, None, None, say)
    queries, available = steps.publish_items(settings)
    als = steps.fit_candidates(settings, say, similar_queries=queries, pool_item_ids=available)
    # what the manifest records of it; the model and its matrices (~0.3 GB) go now
    als_models = {"params": als.params, "seed": als.seed}
    del als
    steps.build_ranking(settings, None, None, say)
    frame = steps.scored_candidates(settings, model, say)
    scores = frame["score"].to_numpy()
    snapshot_file = settings.snapshot_build_path
    snapshot_file.parent.mkdir(parents=True, exist_ok=True)
    model_version = f"{meta.get('feature_version')}-catboost-{meta.get('seed')}"
    with steps.timed(say, "snapshot built"):
        counts = build_snapshot(
            settings.warehouse_path,
            snapshot_file,
            frame,
            scores,
            calibrator.confidences,
            paths["ranker"] / "ranker.cbm",
            meta,
            {
                "feature_version": info["feature_version"],
                "cutoff_at": info["cutoff_at"],
                "model_version": model_version,
            },
        )
    say(f"  rows: {counts}")
    manifest = {
        "feature_version": info["feature_version"],
        "cutoff_at": str(info["cutoff_at"]),
        "dbt_invocation_id": info["dbt_invocation_id"],
        "model_version": model_version,
        "models": {
            "als": als_models,
            "ranker": {k: meta.get(k) for k in ("params", "seed", "features", "feature_version")},
        },
        "metrics": metrics,
    }
    lake = Lake.from_settings(settings)
    try:
        with steps.timed(say, "snapshot verified and published"):
            published = publish(lake, snapshot_file, manifest, force=force)
    except GateRefused as exc:
        say(f"quality gate refused the snapshot: {exc} (use --force to publish anyway)")
        raise
    say(f"published snapshot {published.version} to {lake.url('snapshots/' + published.version)}")
    return published
