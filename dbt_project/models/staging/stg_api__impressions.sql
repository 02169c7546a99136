{#
    One row per impression x item: the API's answers (source api.impressions) with their items
    unnested, renamed and typed. Before the first impressions are ingested the lake has no
    raw/impressions/ files and read_parquet would fail on the empty glob: the model then selects
    no rows with the same columns (macro lake_table_has_files), so that `dbt build` passes on
    every lake. An answer with no items has no row here.
#}

with

{% if lake_table_has_files('impressions') -%}

source as (

    select * from {{ source('api', 'impressions') }}

),

items_unnested as (

    select
        impression_id,
        served_at,
        visitor_id,
        route,
        strategy,
        policy,
        experiment,
        variant,
        snapshot_version,
        model_version,
        anchor_item_id,
        {{ explode_list('items') }} as item

    from source

),

impression_items as (

    select
        items_unnested.impression_id,
        items_unnested.served_at,
        items_unnested.visitor_id,
        items_unnested.route,
        items_unnested.strategy,
        items_unnested.policy,
        items_unnested.experiment,
        items_unnested.variant,
        items_unnested.snapshot_version,
        items_unnested.model_version,
        items_unnested.anchor_item_id,
        -- the struct's fields, named as the staging model names them (item_id, team unchanged)
        items_unnested.item.item_id as item_id,  -- noqa: AL09
        items_unnested.item.rank as item_rank,
        items_unnested.item.source as item_source,
        items_unnested.item.team as team  -- noqa: AL09

    from items_unnested

),

{%- else -%}

impression_items as (

    {#- no impressions in the lake yet: no rows, the columns typed below -#}
    select
        null as impression_id,
        null as served_at,
        null as visitor_id,
        null as route,
        null as strategy,
        null as policy,
        null as experiment,
        null as variant,
        null as snapshot_version,
        null as model_version,
        null as anchor_item_id,
        null as item_id,
        null as item_rank,
        null as item_source,
        null as team

    where 1 = 0

),

{%- endif %}

renamed as (

    select
        cast(impression_id as string) as impression_id,
        {{ epoch_ms_to_timestamp('served_at') }} as served_at,
        cast(visitor_id as bigint) as visitor_id,
        cast(route as string) as route,
        cast(strategy as string) as strategy,
        cast(policy as string) as policy,
        cast(experiment as string) as experiment,
        cast(variant as string) as variant,
        cast(snapshot_version as string) as snapshot_version,
        cast(model_version as string) as model_version,
        cast(anchor_item_id as bigint) as anchor_item_id,
        cast(item_id as bigint) as item_id,
        cast(item_rank as integer) as item_rank,
        cast(item_source as string) as item_source,
        cast(team as string) as team

    from impression_items

)

select * from renamed
