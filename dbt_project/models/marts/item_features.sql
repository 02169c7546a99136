{%- set smoothing = var('rate_smoothing_views') -%}

with

events_weighted as (

    {#- the events with their weights, as interactions and category affinities weigh them -#}
    select * from {{ ref('int_events_weighted') }}

),

interactions as (

    select * from {{ ref('interactions') }}

),

items as (

    select * from {{ ref('int_items_categorized') }}

),

events_aged as (

    select
        item_id,
        event_type,
        event_at,
        weight,
        {{ age_days_at_cutoff('event_at') }} as age_days

    from events_weighted

),

item_activity as (

    select
        item_id,

        sum(case when event_type = 'view' and age_days < 1 then 1 else 0 end) as n_views_1d,
        sum(case when event_type = 'view' and age_days < 7 then 1 else 0 end) as n_views_7d,
        sum(case when event_type = 'view' and age_days < 30 then 1 else 0 end) as n_views_30d,
        sum(case when event_type = 'view' then 1 else 0 end) as n_views_all,

        sum(case when age_days < 1 then 1 else 0 end) as n_events_1d,
        sum(case when age_days < 7 then 1 else 0 end) as n_events_7d,
        sum(case when age_days >= 7 and age_days < 14 then 1 else 0 end) as n_events_prev_7d,
        sum(case when age_days < 30 then 1 else 0 end) as n_events_30d,
        count(*) as n_events_all,

        sum(case when event_type = 'addtocart' and age_days < 30 then 1 else 0 end) as n_carts_30d,
        sum(case when event_type = 'addtocart' then 1 else 0 end) as n_carts_all,
        sum(case when event_type = 'transaction' and age_days < 30 then 1 else 0 end) as n_purchases_30d,
        sum(case when event_type = 'transaction' then 1 else 0 end) as n_purchases_all,

        {{ exact_sum("weight") }} as popularity_score,
        min(event_at) as first_event_at,
        max(event_at) as last_event_at

    from events_aged
    group by item_id

),

item_visitors as (

    {#- from interactions (one row per visitor and item) rather than count(distinct) over events:
        a visitor was active on the item in the last 30 days iff their last interaction was -#}
    select
        item_id,
        sum(case when {{ age_days_at_cutoff('last_interaction_at') }} < 30 then 1 else 0 end)
            as n_visitors_30d,
        count(*) as n_visitors

    from interactions
    group by item_id

),

global_rates as (

    {#- the prior the per-item rates are shrunk towards: the rates over all items -#}
    select
        coalesce(cast(sum(n_carts_all) as double) / nullif(sum(n_views_all), 0), 0) as global_cart_rate,
        coalesce(cast(sum(n_purchases_all) as double) / nullif(sum(n_views_all), 0), 0) as global_purchase_rate

    from item_activity

),

items_joined_to_activity as (

    select
        items.item_id,
        items.category_id,
        items.root_category_id,
        items.category_depth,
        items.is_available,
        items.price,
        items.category_updated_at,
        items.availability_updated_at,
        items.price_updated_at,
        coalesce(item_activity.n_views_1d, 0) as n_views_1d,
        coalesce(item_activity.n_views_7d, 0) as n_views_7d,
        coalesce(item_activity.n_views_30d, 0) as n_views_30d,
        coalesce(item_activity.n_views_all, 0) as n_views_all,
        coalesce(item_activity.n_events_1d, 0) as n_events_1d,
        coalesce(item_activity.n_events_7d, 0) as n_events_7d,
        coalesce(item_activity.n_events_prev_7d, 0) as n_events_prev_7d,
        coalesce(item_activity.n_events_30d, 0) as n_events_30d,
        coalesce(item_activity.n_events_all, 0) as n_events_all,
        coalesce(item_activity.n_carts_30d, 0) as n_carts_30d,
        coalesce(item_activity.n_carts_all, 0) as n_carts_all,
        coalesce(item_activity.n_purchases_30d, 0) as n_purchases_30d,
        coalesce(item_activity.n_purchases_all, 0) as n_purchases_all,
        coalesce(item_visitors.n_visitors_30d, 0) as n_visitors_30d,
        coalesce(item_visitors.n_visitors, 0) as n_visitors,
        coalesce(item_activity.popularity_score, 0) as popularity_score,
        item_activity.first_event_at,
        item_activity.last_event_at

    from items
    left join item_activity
        on items.item_id = item_activity.item_id
    left join item_visitors
        on items.item_id = item_visitors.item_id

),

final as (

    select
        cast(items_joined_to_activity.item_id as bigint) as item_id,
        cast(items_joined_to_activity.category_id as bigint) as category_id,
        cast(items_joined_to_activity.root_category_id as bigint) as root_category_id,
        cast(items_joined_to_activity.category_depth as integer) as category_depth,
        cast(items_joined_to_activity.is_available as boolean) as is_available,
        cast(items_joined_to_activity.price as double) as price,
        cast(items_joined_to_activity.category_updated_at as timestamp) as category_updated_at,
        cast(items_joined_to_activity.availability_updated_at as timestamp) as availability_updated_at,
        cast(items_joined_to_activity.price_updated_at as timestamp) as price_updated_at,
        cast(items_joined_to_activity.n_views_1d as bigint) as n_views_1d,
        cast(items_joined_to_activity.n_views_7d as bigint) as n_views_7d,
        cast(items_joined_to_activity.n_views_30d as bigint) as n_views_30d,
        cast(items_joined_to_activity.n_views_all as bigint) as n_views_all,
        cast(items_joined_to_activity.n_events_1d as bigint) as n_events_1d,
        cast(items_joined_to_activity.n_events_7d as bigint) as n_events_7d,
        cast(items_joined_to_activity.n_events_prev_7d as bigint) as n_events_prev_7d,
        cast(items_joined_to_activity.n_events_30d as bigint) as n_events_30d,
        cast(items_joined_to_activity.n_events_all as bigint) as n_events_all,
        cast(items_joined_to_activity.n_carts_30d as bigint) as n_carts_30d,
        cast(items_joined_to_activity.n_carts_all as bigint) as n_carts_all,
        cast(items_joined_to_activity.n_purchases_30d as bigint) as n_purchases_30d,
        cast(items_joined_to_activity.n_purchases_all as bigint) as n_purchases_all,
        cast(items_joined_to_activity.n_visitors_30d as bigint) as n_visitors_30d,
        cast(items_joined_to_activity.n_visitors as bigint) as n_visitors,
        cast(
            (items_joined_to_activity.n_carts_all + {{ smoothing }} * global_rates.global_cart_rate)
            / (items_joined_to_activity.n_views_all + {{ smoothing }})
            as double
        ) as cart_rate,
        cast(
            (items_joined_to_activity.n_purchases_all + {{ smoothing }} * global_rates.global_purchase_rate)
            / (items_joined_to_activity.n_views_all + {{ smoothing }})
            as double
        ) as purchase_rate,
        cast(
            (items_joined_to_activity.n_events_7d + 1.0) / (items_joined_to_activity.n_events_prev_7d + 1.0)
            as double
        ) as trend_7d,
        cast(items_joined_to_activity.popularity_score as double) as popularity_score,
        cast(items_joined_to_activity.first_event_at as timestamp) as first_event_at,
        cast(items_joined_to_activity.last_event_at as timestamp) as last_event_at,
        cast({{ age_days_at_cutoff('items_joined_to_activity.last_event_at') }} as double)
            as days_since_last_event

    from items_joined_to_activity
    cross join global_rates

)

select * from final
