{#
    The two event windows whose mixes drift_mix_shares compares, one row per role: the var
    drift_window_days days up to the reference build's cutoff, and as many up to the latest
    event ingested (not the current build's cutoff: the monitoring DAG ingests every hour and
    the features are rebuilt daily, so a shift in what shoppers do shows here within the hour).
    No rows without a reference version.
#}

{%- set window_days = drift_window_days() %}

with

builds as (

    select * from {{ ref('drift_builds') }}

),

events as (

    select * from {{ ref('stg_retailrocket__events') }}

),

latest_event as (

    select max(event_at) as event_at from events

),

window_ends as (

    select
        role,  -- noqa: RF04
        cutoff_at as window_end_at

    from builds
    where role = 'reference'

    union all

    select
        builds.role,  -- noqa: RF04
        coalesce(latest_event.event_at, builds.cutoff_at) as window_end_at

    from builds
    cross join latest_event
    where builds.role = 'current'

),

final as (

    select
        cast(role as {{ dbt.type_string() }}) as role,  -- noqa: RF04
        cast({{ dbt.dateadd('day', -window_days, 'window_end_at') }} as {{ dbt.type_timestamp() }})
            as window_start_at,
        cast(window_end_at as {{ dbt.type_timestamp() }}) as window_end_at

    from window_ends

)

select * from final
