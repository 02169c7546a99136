"""Weekly retraining: ingest, features, ALS, ranking features, ranker, evaluate, gate, publish.

The scheduled, observable `recsys run`: every task calls the function the command calls
(`models_ml.pipeline`, `recsys.ingest.ingest_folder`), so there is one code path. The two dbt
builds of training are Cosmos task groups (one task per model, then one for the group's tests),
rendered from the dbt manifest:

- `features`: the feature graph (every model but `tag:ranking`) as of t1, labels to t2;
- `ranking`: the ranking models over the candidates `als_candidates` just wrote.

Their dbt vars come from the `training_windows` task's XCom, spelt as the command spells them.
`evaluate` and `publish` are one task each: they call `pipeline.evaluate` and
`pipeline.publish_snapshot`, which run their own dbt builds (as of t2, and as of the latest
event) exactly as `recsys evaluate` / `recsys publish` do.

`quality_gate` is a branch: `publish` when the gate passes (or the `force` param is set), else
`gate_refused`, which logs the reasons and publishes nothing.

Every task runs in the one-slot `recsys_warehouse` pool and inside the warehouse lease
(`claim_warehouse` ... `release_warehouse`): see `recsys_airflow.common`. Trigger it by hand
or from another DAG with params, e.g. `{"force": true, "search_budget_s": 20}`; `dbt_target`
names the dbt profile's target of every dbt command of the run (`recsys_airflow.dbt_graph`).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, chain, get_current_context, task
from recsys_airflow import common, gate
from recsys_airflow.common import METRICS, RANKER, SNAPSHOT, say
from recsys_airflow.dbt_graph import FEATURE_GRAPH_EXCLUDES, RANKING_MODELS, dbt_group, mart_names

from recsys.settings import DEFAULT_SEARCH_BUDGET_S

# models_ml (numpy, CatBoost, ...) is imported inside the tasks: parsing the DAG stays light.

WINDOW_VARS = "{{{{ ti.xcom_pull(task_ids='training_windows')['dbt_vars']['{name}'] }}}}"
TRAINING_DBT_VARS = {name: WINDOW_VARS.format(name=name) for name in ("cutoff_at", "label_end_at")}

with DAG(
    dag_id="recsys_training",
    description="Retrain ALS + CatBoost on the latest events and publish a gated snapshot",
    doc_md=__doc__,
    schedule="@weekly",  # the seed documents schedule retraining weekly
    start_date=common.START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=common.DEFAULT_ARGS,
    params={
        "raw_dir": common.raw_dir_param(),
        "search_budget_s": Param(
            DEFAULT_SEARCH_BUDGET_S, type="number", minimum=0, description="ranker search"
        ),
        "test_days": Param(14.0, type="number", exclusiveMinimum=0),
        "label_days": Param(14.0, type="number", exclusiveMinimum=0),
        "force": Param(False, type="boolean", description="publish even if the gate refuses"),
        "dbt_target": common.dbt_target_param(),
    },
    tags=["recsys", "training"],
) as dag:

    @task
    def training_windows() -> dict[str, Any]:
        """t1, t2, end from the latest event; the dbt vars of the training builds."""
        from models_ml import pipeline

        params = common.run_params()
        win = pipeline.training_windows(
            common.run_settings(), say, float(params["test_days"]), float(params["label_days"])
        )
        return {"windows": win.to_dict(), "dbt_vars": pipeline.training_dbt_vars(win)}

    # XCom values are typed Any: at parse time they are XComArgs, at run time their values
    @task
    def als_candidates(windows: Any) -> dict[str, Any]:
        """ALS on the features as of t1; candidates written back as the ml source."""
        from models_ml import pipeline

        win = pipeline.windows_from_dict(windows["windows"])
        return pipeline.fit_training_candidates(common.run_settings(), win, say)

    @task(outlets=[RANKER])
    def train_ranker(windows: Any, als: Any) -> dict[str, Any]:
        """CatBoost ranker, conformal calibration, models/training.json."""
        from models_ml import pipeline

        win = pipeline.windows_from_dict(windows["windows"])
        budget = float(common.run_params()["search_budget_s"])
        training = pipeline.train_ranker(
            common.run_settings(), win, als, say, search_budget_s=budget
        )
        return {"ranker": training["ranker"], "conformal": training["conformal"]}

    @task(inlets=[RANKER], outlets=[METRICS])
    def evaluate() -> dict[str, Any]:
        """Features and ALS as of t2, the models scored on (t2, end]; reports/metrics.json."""
        from models_ml import pipeline

        metrics = pipeline.evaluate(common.run_settings(), say)
        return {"protocol": metrics["protocol"], "models": metrics["models"]}

    @task.branch(task_id="quality_gate")
    def quality_gate() -> str:
        """`publish` if the gate passes (or the `force` param is set), else `gate_refused`."""
        return gate.branch(bool(common.run_params()["force"]), common.run_settings())

    @task(task_id=gate.GATE_REFUSED)
    def gate_refused() -> list[str]:
        """Stop: nothing is published. The reasons, for the log and the XCom."""
        return gate.refused(common.run_settings())

    @task(
        task_id=gate.PUBLISH,
        inlets=[RANKER, METRICS, *(common.feature_asset(m) for m in mart_names())],
        outlets=[SNAPSHOT],
    )
    def publish() -> dict[str, Any]:
        """Features and ALS as of the latest event, ranked, published as a snapshot."""
        from models_ml import pipeline

        force = bool(common.run_params()["force"])
        published = pipeline.publish_snapshot(common.run_settings(), say, force=force)
        manifest = published.manifest
        get_current_context()["outlet_events"][SNAPSHOT].extra = {
            "version": published.version,
            "feature_version": manifest["feature_version"],
            "model_version": manifest["model_version"],
        }
        return {"version": published.version, "forced": manifest["forced"]}

    claim, release = common.warehouse_lease()  # every other task runs between these two
    windows = training_windows()
    features = dbt_group("features", exclude=FEATURE_GRAPH_EXCLUDES, dbt_vars=TRAINING_DBT_VARS)
    als = als_candidates(windows)
    ranking = dbt_group("ranking", select=RANKING_MODELS, dbt_vars=TRAINING_DBT_VARS)
    branch = quality_gate()

    chain(claim, common.ingest(), windows, features, als, ranking)
    chain(ranking, train_ranker(windows, als), evaluate(), branch)
    chain(branch, [publish(), gate_refused()], release)
