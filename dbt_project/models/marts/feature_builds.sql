{#
    One row describing this build of the feature marts, for whoever reads them (training records
    it with the model). Built after the other marts, so it exists only if they did.
#}

with

events as (

    select * from {{ ref('events') }}

),

sessions as (

    select * from {{ ref('sessions') }}

),

item_features as (

    select * from {{ ref('item_features') }}

),

visitor_features as (

    select * from {{ ref('visitor_features') }}

),

interactions as (

    select * from {{ ref('interactions') }}

),

visitor_category_affinities as (

    select * from {{ ref('visitor_category_affinities') }}

),

categories as (

    select * from {{ ref('categories') }}

),

mart_counts as (

    select
        (select count(*) from events) as n_events,
        (select count(*) from sessions) as n_sessions,
        (select count(*) from item_features) as n_items,
        (select count(*) from visitor_features) as n_visitors,
        (select count(*) from interactions) as n_interactions,
        (select count(*) from visitor_category_affinities) as n_visitor_category_affinities,
        (select count(*) from categories) as n_categories

),

final as (

    select
        cast('{{ feature_version() }}' as string) as feature_version,
        cast({{ cutoff_at() }} as timestamp) as cutoff_at,
        cast('{{ invocation_id }}' as string) as invocation_id,
        cast('{{ run_started_at.strftime("%Y-%m-%d %H:%M:%S.%f") }}' as timestamp) as built_at,
        cast('{{ dbt_version }}' as string) as dbt_version,
        cast({{ var('session_gap_minutes') }} as integer) as session_gap_minutes,
        cast({{ var('decay_half_life_days') }} as double) as decay_half_life_days,
        cast('{{ tojson(var("event_weights")) }}' as string) as event_weights,
        cast({{ var('rate_smoothing_views') }} as double) as rate_smoothing_views,
        cast(n_events as bigint) as n_events,
        cast(n_sessions as bigint) as n_sessions,
        cast(n_items as bigint) as n_items,
        cast(n_visitors as bigint) as n_visitors,
        cast(n_interactions as bigint) as n_interactions,
        cast(n_visitor_category_affinities as bigint) as n_visitor_category_affinities,
        cast(n_categories as bigint) as n_categories

    from mart_counts

)

select * from final
