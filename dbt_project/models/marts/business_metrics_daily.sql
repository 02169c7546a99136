{#
    The shop per day (UTC), site-wide, as of the cutoff: visitors, sessions, how many of the
    visitors carted and bought, orders, purchased items and their revenue where prices are
    known; and the recommendations' totals of the day (recommendation_metrics_daily has them
    per route, strategy, experiment, variant and model). A day of the cutoff is partial.
#}

with

events as (

    select * from {{ ref('events') }}

),

sessions as (

    select * from {{ ref('sessions') }}

),

purchases as (

    select * from {{ ref('int_purchases_priced') }}

),

recommendations as (

    select * from {{ ref('recommendation_metrics_daily') }}

),

visitor_days as (

    select
        event_date,
        visitor_id,
        max(case when event_type = 'addtocart' then 1 else 0 end) as has_cart,
        max(case when event_type = 'transaction' then 1 else 0 end) as has_purchase

    from events
    group by event_date, visitor_id

),

visitors_per_day as (

    select
        event_date as metric_date,
        count(*) as n_visitors,
        sum(has_cart) as n_visitors_with_cart,
        sum(has_purchase) as n_visitors_with_purchase

    from visitor_days
    group by event_date

),

sessions_per_day as (

    select
        cast(started_at as date) as metric_date,
        count(*) as n_sessions

    from sessions
    group by cast(started_at as date)

),

purchases_per_day as (

    select
        cast(purchased_at as date) as metric_date,
        count(distinct transaction_id) as n_transactions,
        count(*) as n_purchased_items,
        count(price) as n_priced_purchased_items,
        {{ exact_sum('price') }} as revenue

    from purchases
    group by cast(purchased_at as date)

),

recommendations_per_day as (

    select
        served_date as metric_date,
        sum(n_impressions) as n_impressions,
        sum(n_impressed_items) as n_impressed_items,
        sum(n_attributed_views) as n_attributed_views,
        sum(n_attributed_purchases) as n_attributed_purchases,
        {{ exact_sum('attributed_revenue') }} as attributed_revenue

    from recommendations
    group by served_date

),

days as (

    select metric_date from visitors_per_day
    union
    select metric_date from recommendations_per_day

),

days_joined as (

    select
        days.metric_date,
        coalesce(visitors_per_day.n_visitors, 0) as n_visitors,
        coalesce(sessions_per_day.n_sessions, 0) as n_sessions,
        coalesce(visitors_per_day.n_visitors_with_cart, 0) as n_visitors_with_cart,
        coalesce(visitors_per_day.n_visitors_with_purchase, 0) as n_visitors_with_purchase,
        coalesce(purchases_per_day.n_transactions, 0) as n_transactions,
        coalesce(purchases_per_day.n_purchased_items, 0) as n_purchased_items,
        coalesce(purchases_per_day.n_priced_purchased_items, 0) as n_priced_purchased_items,
        coalesce(purchases_per_day.revenue, 0) as revenue,
        coalesce(recommendations_per_day.n_impressions, 0) as n_impressions,
        coalesce(recommendations_per_day.n_impressed_items, 0) as n_impressed_items,
        coalesce(recommendations_per_day.n_attributed_views, 0) as n_attributed_views,
        coalesce(recommendations_per_day.n_attributed_purchases, 0) as n_attributed_purchases,
        coalesce(recommendations_per_day.attributed_revenue, 0) as attributed_revenue

    from days
    left join visitors_per_day
        on days.metric_date = visitors_per_day.metric_date
    left join sessions_per_day
        on days.metric_date = sessions_per_day.metric_date
    left join purchases_per_day
        on days.metric_date = purchases_per_day.metric_date
    left join recommendations_per_day
        on days.metric_date = recommendations_per_day.metric_date

),

final as (

    select
        cast(metric_date as date) as metric_date,
        cast(n_visitors as bigint) as n_visitors,
        cast(n_sessions as bigint) as n_sessions,
        cast(n_visitors_with_cart as bigint) as n_visitors_with_cart,
        cast(n_visitors_with_purchase as bigint) as n_visitors_with_purchase,
        cast(n_visitors_with_purchase as double) / nullif(n_visitors, 0) as conversion_rate,
        cast(n_visitors_with_cart as double) / nullif(n_visitors, 0) as add_to_cart_rate,
        cast(n_transactions as bigint) as n_transactions,
        cast(n_purchased_items as bigint) as n_purchased_items,
        cast(n_priced_purchased_items as bigint) as n_priced_purchased_items,
        cast(revenue as double) as revenue,
        cast(n_impressions as bigint) as n_impressions,
        cast(n_impressed_items as bigint) as n_impressed_items,
        cast(n_attributed_views as bigint) as n_attributed_views,
        cast(n_attributed_views as double) / nullif(n_impressed_items, 0) as recommendation_ctr,
        cast(n_attributed_purchases as bigint) as n_attributed_purchases,
        cast(attributed_revenue as double) as attributed_revenue

    from days_joined

)

select * from final
