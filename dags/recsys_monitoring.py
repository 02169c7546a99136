"""Hourly monitoring: ingest what the API landed, the monitoring models, the retraining policy.

The scheduled `recsys monitor`, one code path (`monitoring.run`):

- `ingest`: the API's landed events and impressions -> the lake's raw/ (as the features DAG);
- `prepare`: the served snapshot names the reference (the feature version its ranker was trained
  on), the warehouse's build is the current one; each published snapshot's lists go to the
  lake's monitoring/published/ for the live performance model;
- `monitoring`: a Cosmos group of the monitoring models (drift, live performance, hourly
  volume), one task per model then one for their tests (which warn: `dbt build` shows drift
  without failing), with the vars `prepare` returned;
- `decide`: dbt source freshness, the policy's decision (recorded in the lake with its reasons),
  `reports/monitoring.json` and the report, the export the monitoring service reads;
- `should_retrain` -> `trigger_training`: when the policy says so, a `recsys_training` run is
  triggered with the reasons in its conf (`{"reasons": [...], "details": [...]}`, and this run's
  `dbt_target`); its `claim_warehouse` waits until this run releases the warehouse.

The `dbt_target` param names the dbt profile's target of every dbt command of the run
(`recsys_airflow.dbt_graph`). Every task runs inside the warehouse lease
(`recsys_airflow.common`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, chain, get_current_context, task
from recsys_airflow import common
from recsys_airflow.common import say
from recsys_airflow.dbt_graph import MONITORING_GROUP, dbt_group

PREPARED = "{{{{ ti.xcom_pull(task_ids='prepare')['dbt_vars']['{name}'] }}}}"
MONITORING_DBT_VARS = {
    name: PREPARED.format(name=name) for name in ("cutoff_at", "monitoring_reference_version")
}

# the triggered run's conf: {"reasons": [...], "details": [...], "dbt_target": ...}, the
# decision's own lists, and this run's dbt target (the training builds where monitoring looked)
TRIGGER_CONF = (
    "{% set decision = ti.xcom_pull(task_ids='decide') %}"
    "{{ {'reasons': decision['reasons'], 'details': decision['details'],"
    " 'dbt_target': params.dbt_target} | tojson }}"
)

with DAG(
    dag_id="recsys_monitoring",
    description="Drift, live performance, freshness and the retraining decision, hourly",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=common.START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=common.DEFAULT_ARGS,
    params={"raw_dir": common.raw_dir_param(), "dbt_target": common.dbt_target_param()},
    tags=["recsys", "monitoring"],
) as dag:

    @task
    def prepare() -> dict[str, Any]:
        """The reference and current feature versions; the published lists to the lake."""
        from monitoring import run

        prepared = run.prepare(common.run_settings(), say)
        # a null reference would be rendered by the template as the string "None": "" instead,
        # which the models read as no reference
        dbt_vars = {k: ("" if v is None else v) for k, v in prepared.dbt_vars().items()}
        return {"dbt_vars": dbt_vars, "prepared": dataclasses.asdict(prepared)}

    @task
    def decide(prepared: Any) -> dict[str, Any]:
        """Freshness, the decision (recorded with its reasons), the report and its export."""
        from monitoring import run

        context = get_current_context()
        run_id = f"{context['dag'].dag_id}/{context['run_id']}"  # a cleared task: the same run
        result = run.conclude(
            common.run_settings(), run.Prepared(**prepared["prepared"]), run_id=run_id, say=say
        )
        return result.decision.record()

    # only the trigger is skipped when not: the lease's teardown still runs
    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def should_retrain(decision: Any) -> bool:
        """Go on to the trigger only when the policy decided to retrain."""
        say(f"retrain: {decision['decision']} {decision['reasons'] or decision['held']}")
        return bool(decision["decision"])

    trigger = TriggerDagRunOperator(
        task_id="trigger_training",
        trigger_dag_id="recsys_training",
        # one template rendering the whole conf as JSON, which the operator parses: a dict of
        # templates would render each list as a string ('["drift"]'), not a list
        conf=TRIGGER_CONF,  # type: ignore[arg-type]
        wait_for_completion=False,
        doc_md="A training run, with the policy's reasons in its conf.",
    )

    claim, release = common.warehouse_lease()  # every other task runs between these two
    monitoring = dbt_group("monitoring", select=MONITORING_GROUP, dbt_vars=MONITORING_DBT_VARS)
    prepared = prepare()
    decision = decide(prepared)
    retrain = should_retrain(decision)
    chain(claim, common.ingest(), prepared, monitoring, decision, retrain, trigger, release)
