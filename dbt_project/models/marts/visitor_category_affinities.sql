{#
    affinity_score = sum over the visitor's events in the category of their weights
    (int_events_weighted, the same weights as interactions).
#}

with

events_weighted as (

    select * from {{ ref('int_events_weighted') }}

),

affinities as (

    select
        visitor_id,
        category_id,
        count(*) as n_events,
        sum(case when event_type = 'view' then 1 else 0 end) as n_views,
        sum(case when event_type = 'addtocart' then 1 else 0 end) as n_carts,
        sum(case when event_type = 'transaction' then 1 else 0 end) as n_purchases,
        {{ exact_sum("weight") }} as affinity_score,
        max(event_at) as last_event_at

    from events_weighted
    group by visitor_id, category_id

),

affinities_shared as (

    select
        *,
        {#- affinity_score is an exact decimal, divided in double (as DuckDB divides decimals;
            Spark's decimal division would keep 6 digits): a visitor's shares add up to 1. A visitor
            last seen more than ~50 half-lives before the cutoff (four years at the default
            half-life of 30 days: a shop's long-gone visitors) has every weight decayed to 0: their shares
            are then by events, so that a top category is still the one they used most -#}
        coalesce(
            cast(affinity_score as double)
            / nullif(cast(sum(affinity_score) over (partition by visitor_id) as double), 0),
            cast(n_events as double) / sum(n_events) over (partition by visitor_id)
        ) as affinity_share,
        row_number() over (
            partition by visitor_id
            order by affinity_score desc, n_events desc, category_id asc
        ) as category_rank

    from affinities

),

final as (

    select
        cast(visitor_id as bigint) as visitor_id,
        cast(category_id as bigint) as category_id,
        cast(n_events as bigint) as n_events,
        cast(n_views as bigint) as n_views,
        cast(n_carts as bigint) as n_carts,
        cast(n_purchases as bigint) as n_purchases,
        cast(affinity_score as double) as affinity_score,
        cast(affinity_share as double) as affinity_share,
        cast(category_rank as integer) as category_rank,
        cast(last_event_at as timestamp) as last_event_at

    from affinities_shared

)

select * from final
