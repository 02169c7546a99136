"""Daily features: ingest new events (the API's landed ones too), rebuild the feature marts.

The same steps as `recsys ingest` + `recsys build`: `ingest` calls the command's ingest (or, with
no `raw_dir`, ingests only the events the API landed in the lake's `landing/events/`); the
`features` Cosmos group builds the feature graph (every model but the ranking ones) as of the
latest event, one task per model then one for their tests, rendered from the dbt manifest;
`summary` logs what the build made, as `recsys build` prints it. Each mart's task updates its
feature asset in the lake. The `dbt_target` param names the dbt profile's target of every dbt
command of the run (`recsys_airflow.dbt_graph`).

Every task runs in the one-slot `recsys_warehouse` pool and inside the warehouse lease
(`claim_warehouse` ... `release_warehouse`), so it never interleaves with a training run: see
`recsys_airflow.common`.
"""

from __future__ import annotations

from airflow.sdk import DAG, chain, task
from recsys_airflow import common
from recsys_airflow.common import say
from recsys_airflow.dbt_graph import FEATURE_GRAPH_EXCLUDES, dbt_group

with DAG(
    dag_id="recsys_features",
    description="Ingest new events and rebuild the feature marts as of the latest event",
    doc_md=__doc__,
    schedule="@daily",
    start_date=common.START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=common.DEFAULT_ARGS,
    params={
        "raw_dir": common.raw_dir_param(),
        "dbt_target": common.dbt_target_param(),
    },
    tags=["recsys", "features"],
) as dag:

    @task
    def summary() -> str:
        """What the build made: feature version, cutoff, rows per mart (of the DuckDB warehouse:
        on another target, as `recsys build --target` does, none)."""
        from recsys.warehouse import summary

        settings = common.run_settings()
        if settings.recsys_dbt_target not in common.DUCKDB_TARGETS:
            text = f"built on dbt target {settings.recsys_dbt_target}: no DuckDB summary"
        else:
            text = summary(settings)
        say(text)
        return text

    claim, release = common.warehouse_lease()  # every other task runs between these two
    features = dbt_group("features", exclude=FEATURE_GRAPH_EXCLUDES)
    chain(claim, common.ingest(), features, summary(), release)
