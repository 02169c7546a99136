with

events as (

    select * from {{ ref('events') }}

),

session_items as (

    {#- one row per session and item first: cheaper than count(distinct item_id) per session -#}
    select
        visitor_id,
        session_number,
        item_id,
        min(event_at) as started_at,
        max(event_at) as ended_at,
        count(*) as n_events,
        sum(case when event_type = 'view' then 1 else 0 end) as n_views,
        sum(case when event_type = 'addtocart' then 1 else 0 end) as n_carts,
        sum(case when event_type = 'transaction' then 1 else 0 end) as n_purchases

    from events
    group by visitor_id, session_number, item_id

),

sessions_aggregated as (

    select
        visitor_id,
        session_number,
        min(started_at) as started_at,
        max(ended_at) as ended_at,
        sum(n_events) as n_events,
        sum(n_views) as n_views,
        sum(n_carts) as n_carts,
        sum(n_purchases) as n_purchases,
        count(*) as n_distinct_items

    from session_items
    group by visitor_id, session_number

),

final as (

    select
        cast({{ build_session_id('visitor_id', 'session_number') }} as string) as session_id,
        cast(visitor_id as bigint) as visitor_id,
        cast(session_number as integer) as session_number,
        cast(started_at as timestamp) as started_at,
        cast(ended_at as timestamp) as ended_at,
        cast({{ seconds_between('started_at', 'ended_at') }} as double) as duration_seconds,
        cast(n_events as bigint) as n_events,
        cast(n_views as bigint) as n_views,
        cast(n_carts as bigint) as n_carts,
        cast(n_purchases as bigint) as n_purchases,
        cast(n_distinct_items as bigint) as n_distinct_items,
        n_purchases > 0 as is_converted

    from sessions_aggregated

)

select * from final
