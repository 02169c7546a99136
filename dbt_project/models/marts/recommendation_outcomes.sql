{#
    What became of each item the API showed: one row per impression x item served at or before
    the cutoff, with whether (and when) the visitor viewed, carted and bought that item after
    the impression, counting events at or before the cutoff only.

    Attribution, first touch, per event: an event on item i by visitor v counts for
    1. the impression it names (its impression_id), when that impression is v's, holds i and
       was served at or before the event; else
    2. the earliest impression of v holding i served at or before the event and at most
       var attribution_window_minutes[event type] before it.
    So one event counts for one impression x item at most, an event before an impression never
    counts for it, and an impression without a visitor gets no outcome. Each impression x item
    then counts each outcome once (its first attributed event of that type): ten views of a
    shown item are one view.
#}

with

impressions as (

    select * from {{ ref('stg_api__impressions') }}

),

events as (

    select * from {{ ref('events') }}

),

purchases as (

    select * from {{ ref('int_purchases_priced') }}

),

impression_items as (

    select * from impressions
    where served_at <= {{ cutoff_at() }}

),

events_on_shown_items as (

    select
        events.event_id,
        events.event_at,
        events.visitor_id,
        events.item_id,
        events.event_type,
        events.impression_id

    from events
    where exists (
        select 1 from impression_items
        where
            impression_items.visitor_id = events.visitor_id
            and impression_items.item_id = events.item_id
    )

),

events_joined_to_impressions as (

    select
        events_on_shown_items.event_id,
        events_on_shown_items.event_at,
        events_on_shown_items.event_type,
        impression_items.impression_id,
        impression_items.item_id,
        impression_items.served_at,
        coalesce(events_on_shown_items.impression_id = impression_items.impression_id, false)
            as is_named_by_event

    from events_on_shown_items
    inner join impression_items
        on events_on_shown_items.visitor_id = impression_items.visitor_id
        and events_on_shown_items.item_id = impression_items.item_id
        and events_on_shown_items.event_at >= impression_items.served_at
    where
        events_on_shown_items.impression_id = impression_items.impression_id
        or {{ seconds_between('impression_items.served_at', 'events_on_shown_items.event_at') }}
        <= {{ attribution_window_seconds('events_on_shown_items.event_type') }}

),

events_ranked_per_impression as (

    select
        *,
        row_number() over (
            partition by event_id
            order by
                case when is_named_by_event then 0 else 1 end,
                served_at,
                impression_id
        ) as touch_order

    from events_joined_to_impressions

),

attributed_events as (

    select * from events_ranked_per_impression
    where touch_order = 1

),

first_outcomes as (

    select
        impression_id,
        item_id,
        min(case when event_type = 'view' then event_at end) as first_viewed_at,
        min(case when event_type = 'addtocart' then event_at end) as first_added_to_cart_at,
        min(case when event_type = 'transaction' then event_at end) as first_purchased_at,
        max(case when is_named_by_event then 1 else 0 end) as has_named_event

    from attributed_events
    group by impression_id, item_id

),

first_purchases as (

    {#- the purchase event counted: the first, ties broken by event_id (one price per row) -#}
    select
        attributed_events.impression_id,
        attributed_events.item_id,
        purchases.price,
        row_number() over (
            partition by attributed_events.impression_id, attributed_events.item_id
            order by attributed_events.event_at, attributed_events.event_id
        ) as purchase_order

    from attributed_events
    inner join purchases
        on attributed_events.event_id = purchases.event_id

),

impression_items_with_outcomes as (

    select
        impression_items.*,
        first_outcomes.first_viewed_at,
        first_outcomes.first_added_to_cart_at,
        first_outcomes.first_purchased_at,
        coalesce(first_outcomes.has_named_event = 1, false) as is_attributed_by_impression_id,
        first_purchases.price as purchase_price

    from impression_items
    left join first_outcomes
        on impression_items.impression_id = first_outcomes.impression_id
        and impression_items.item_id = first_outcomes.item_id
    left join first_purchases
        on impression_items.impression_id = first_purchases.impression_id
        and impression_items.item_id = first_purchases.item_id
        and first_purchases.purchase_order = 1

),

final as (

    select
        cast(impression_id as string) as impression_id,
        cast(item_id as bigint) as item_id,
        cast(served_at as timestamp) as served_at,
        cast(served_at as date) as served_date,
        cast(visitor_id as bigint) as visitor_id,
        cast(route as string) as route,
        cast(strategy as string) as strategy,
        cast(policy as string) as policy,
        cast(experiment as string) as experiment,
        cast(variant as string) as variant,
        cast(snapshot_version as string) as snapshot_version,
        cast(model_version as string) as model_version,
        cast(anchor_item_id as bigint) as anchor_item_id,
        cast(item_rank as integer) as item_rank,
        cast(item_source as string) as item_source,
        cast(team as string) as team,
        first_viewed_at is not null as is_viewed,
        cast(first_viewed_at as timestamp) as first_viewed_at,
        first_added_to_cart_at is not null as is_added_to_cart,
        cast(first_added_to_cart_at as timestamp) as first_added_to_cart_at,
        first_purchased_at is not null as is_purchased,
        cast(first_purchased_at as timestamp) as first_purchased_at,
        is_attributed_by_impression_id,
        cast(purchase_price as double) as purchase_price,
        cast(coalesce(purchase_price, 0) as double) as revenue

    from impression_items_with_outcomes

)

select * from final
