{#
    Distinct counts are taken from coarser tables rather than with count(distinct) over every
    event (several distinct aggregates per visitor are the slow part at full scale): items from
    interactions (one row per visitor and item), categories from visitor_category_affinities
    (one row per visitor and category, which also ranks them), active days from a per-day
    pre-aggregation.
#}

with

events as (

    select * from {{ ref('events') }}

),

interactions as (

    select * from {{ ref('interactions') }}

),

visitor_category_affinities as (

    select * from {{ ref('visitor_category_affinities') }}

),

visitor_days as (

    select
        visitor_id,
        event_date,
        count(*) as n_events,
        sum(case when event_type = 'view' then 1 else 0 end) as n_views,
        sum(case when event_type = 'addtocart' then 1 else 0 end) as n_carts,
        sum(case when event_type = 'transaction' then 1 else 0 end) as n_purchases,
        max(session_number) as n_sessions,
        min(event_at) as first_event_at,
        max(event_at) as last_event_at

    from events
    group by visitor_id, event_date

),

visitor_activity as (

    select
        visitor_id,
        sum(n_events) as n_events,
        {#- sessions are numbered 1..n per visitor, so the largest number is the count -#}
        max(n_sessions) as n_sessions,
        sum(n_views) as n_views,
        sum(n_carts) as n_carts,
        sum(n_purchases) as n_purchases,
        count(*) as n_active_days,
        min(first_event_at) as first_event_at,
        max(last_event_at) as last_event_at

    from visitor_days
    group by visitor_id

),

visitor_transactions as (

    select
        visitor_id,
        count(distinct transaction_id) as n_transactions

    from events
    where transaction_id is not null
    group by visitor_id

),

visitor_items as (

    select
        visitor_id,
        count(*) as n_distinct_items

    from interactions
    group by visitor_id

),

visitor_categories as (

    select
        visitor_id,
        count(*) as n_distinct_categories

    from visitor_category_affinities
    group by visitor_id

),

top_categories as (

    {#- the favourite category is the one with the highest affinity score (rank 1) -#}
    select
        visitor_id,
        category_id as top_category_id,
        affinity_share as top_category_share

    from visitor_category_affinities
    where category_rank = 1

),

final as (

    select
        cast(visitor_activity.visitor_id as bigint) as visitor_id,
        cast(visitor_activity.n_events as bigint) as n_events,
        cast(visitor_activity.n_sessions as bigint) as n_sessions,
        cast(visitor_activity.n_views as bigint) as n_views,
        cast(visitor_activity.n_carts as bigint) as n_carts,
        cast(visitor_activity.n_purchases as bigint) as n_purchases,
        cast(coalesce(visitor_transactions.n_transactions, 0) as bigint) as n_transactions,
        cast(visitor_items.n_distinct_items as bigint) as n_distinct_items,
        cast(visitor_categories.n_distinct_categories as bigint) as n_distinct_categories,
        cast(visitor_activity.n_active_days as bigint) as n_active_days,
        cast(cast(visitor_activity.n_events as double) / visitor_activity.n_sessions as double)
            as events_per_session,
        cast(visitor_activity.first_event_at as timestamp) as first_event_at,
        cast(visitor_activity.last_event_at as timestamp) as last_event_at,
        cast({{ age_days_at_cutoff('visitor_activity.last_event_at') }} as double) as recency_days,
        cast({{ age_days_at_cutoff('visitor_activity.first_event_at') }} as double) as tenure_days,
        cast(top_categories.top_category_id as bigint) as top_category_id,
        cast(top_categories.top_category_share as double) as top_category_share

    from visitor_activity
    inner join visitor_items
        on visitor_activity.visitor_id = visitor_items.visitor_id
    inner join visitor_categories
        on visitor_activity.visitor_id = visitor_categories.visitor_id
    inner join top_categories
        on visitor_activity.visitor_id = top_categories.visitor_id
    left join visitor_transactions
        on visitor_activity.visitor_id = visitor_transactions.visitor_id

)

select * from final
