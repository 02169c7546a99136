{#
    Event volume per hour against the same hour of the week in earlier weeks: the last
    volume_check_hours complete clock hours before the latest event in the lake (the latest
    event's own hour is still filling up, so it is left out), each with its count of raw events
    and the mean count of the same hour 1 .. volume_check_weeks weeks earlier. Only earlier
    weeks the lake covers count (an hour starting at or after its first event; an hour without
    events there counts as 0). The ratio count / baseline decides the status by the vars
    volume_ratio_warn and volume_ratio_fail, {low, high} each, strictly outside a bound; an
    hour is 'ok' without a ratio (no earlier week covered, or a baseline of 0 events) and when
    its baseline is below volume_min_baseline_events (a ratio of a few events is noise).
    Events are read uncut (stg_retailrocket__events).
#}

{%- set n_hours = var('volume_check_hours') | int -%}
{%- set n_weeks = var('volume_check_weeks') | int -%}
{%- set warn_bounds = var('volume_ratio_warn') -%}
{%- set fail_bounds = var('volume_ratio_fail') -%}
{%- set min_baseline = var('volume_min_baseline_events') -%}

with

events as (

    select * from {{ ref('stg_retailrocket__events') }}

),

lake_span as (

    select
        min(event_at) as first_event_at,
        {{ dbt.date_trunc('hour', 'max(event_at)') }} as latest_hour_start_at

    from events

),

hour_offsets as (

    {{ dbt.generate_series(n_hours) }}

),

week_offsets as (

    {{ dbt.generate_series(n_weeks) }}

),

checked_hours as (

    -- the n_hours clock hours before the latest event's own hour
    select
        {{ dbt.dateadd('hour', '-1 * hour_offsets.generated_number', 'lake_span.latest_hour_start_at') }}
            as hour_start_at

    from hour_offsets
    cross join lake_span
    where lake_span.latest_hour_start_at is not null

),

baseline_hours as (

    -- the same hour of the week, 1 .. n_weeks weeks earlier, where the lake covers it
    select
        checked_hours.hour_start_at,
        {{ dbt.dateadd('hour', '-168 * week_offsets.generated_number', 'checked_hours.hour_start_at') }}
            as baseline_hour_start_at

    from checked_hours
    cross join week_offsets
    cross join lake_span
    where
        {{ dbt.dateadd('hour', '-168 * week_offsets.generated_number', 'checked_hours.hour_start_at') }}
        >= lake_span.first_event_at

),

hourly_counts as (

    -- events per clock hour, from the earliest hour a baseline may read
    select
        {{ dbt.date_trunc('hour', 'events.event_at') }} as hour_start_at,
        count(*) as n_events

    from events
    cross join lake_span
    where
        events.event_at >= {{ dbt.dateadd(
            'hour', -(n_hours + 168 * n_weeks), 'lake_span.latest_hour_start_at'
        ) }}
    group by {{ dbt.date_trunc('hour', 'events.event_at') }}

),

baselines as (

    select
        baseline_hours.hour_start_at,
        count(*) as baseline_weeks,
        avg(coalesce(hourly_counts.n_events, 0)) as baseline_mean

    from baseline_hours
    left join hourly_counts
        on baseline_hours.baseline_hour_start_at = hourly_counts.hour_start_at
    group by baseline_hours.hour_start_at

),

hours_compared as (

    select
        checked_hours.hour_start_at,
        coalesce(hourly_counts.n_events, 0) as n_events,
        baselines.baseline_mean,
        coalesce(baselines.baseline_weeks, 0) as baseline_weeks,
        -- null without a baseline, or with one of 0 events
        coalesce(hourly_counts.n_events, 0) / nullif(baselines.baseline_mean, 0) as ratio

    from checked_hours
    left join hourly_counts
        on checked_hours.hour_start_at = hourly_counts.hour_start_at
    left join baselines
        on checked_hours.hour_start_at = baselines.hour_start_at

),

final as (

    select
        cast(hour_start_at as timestamp) as hour_start_at,
        cast(n_events as bigint) as n_events,
        cast(baseline_mean as double) as baseline_mean,
        cast(baseline_weeks as integer) as baseline_weeks,
        cast(ratio as double) as ratio,
        cast(
            case
                when ratio is null or baseline_mean < {{ min_baseline }} then 'ok'
                when
                    ratio < {{ fail_bounds['low'] }} or ratio > {{ fail_bounds['high'] }}
                    then 'fail'
                when
                    ratio < {{ warn_bounds['low'] }} or ratio > {{ warn_bounds['high'] }}
                    then 'warn'
                else 'ok'
            end as string
        ) as status

    from hours_compared

)

select * from final
