{#
    One row per published snapshot x visitor x rank: the lists `recsys monitor` exported from
    each published snapshot (source monitoring.published_lists), renamed and typed. Before the
    first export the lake has no monitoring/published/ files and read_parquet would fail on the
    empty glob: the model then selects no rows with the same columns (macro
    monitoring_table_has_files), so that the monitoring models build on every lake.
#}

with

{% if monitoring_table_has_files('published') -%}

source as (

    select * from {{ source('monitoring', 'published_lists') }}

),

{%- else -%}

source as (

    {#- nothing exported yet: no rows, the columns typed below -#}
    select
        null as snapshot_version,
        null as cutoff_at,
        null as visitor_id,
        null as item_id,
        null as rank,
        null as offline_ndcg_at_10,
        null as offline_recall_at_20

    where 1 = 0

),

{%- endif %}

renamed as (

    select
        cast(snapshot_version as string) as snapshot_version,
        cast(cutoff_at as timestamp) as cutoff_at,
        cast(visitor_id as bigint) as visitor_id,
        cast(item_id as bigint) as item_id,
        cast(rank as integer) as item_rank,
        cast(offline_ndcg_at_10 as double) as offline_ndcg_at_10,
        cast(offline_recall_at_20 as double) as offline_recall_at_20

    from source

)

select * from renamed
