{#
    weight = sum over the visitor's events on the item of their weights (int_events_weighted:
    event_weight(event_type) * exp(-ln 2 * age_days / decay_half_life_days) at the cutoff).
#}

with

events_weighted as (

    select * from {{ ref('int_events_weighted') }}

),

interactions as (

    select
        visitor_id,
        item_id,
        count(*) as n_events,
        sum(case when event_type = 'view' then 1 else 0 end) as n_views,
        sum(case when event_type = 'addtocart' then 1 else 0 end) as n_carts,
        sum(case when event_type = 'transaction' then 1 else 0 end) as n_purchases,
        min(event_at) as first_interaction_at,
        max(event_at) as last_interaction_at,
        {{ exact_sum("weight") }} as weight

    from events_weighted
    group by visitor_id, item_id

),

final as (

    select
        cast(visitor_id as bigint) as visitor_id,
        cast(item_id as bigint) as item_id,
        cast(n_events as bigint) as n_events,
        cast(n_views as bigint) as n_views,
        cast(n_carts as bigint) as n_carts,
        cast(n_purchases as bigint) as n_purchases,
        cast(first_interaction_at as timestamp) as first_interaction_at,
        cast(last_interaction_at as timestamp) as last_interaction_at,
        cast(weight as double) as weight

    from interactions

)

select * from final
