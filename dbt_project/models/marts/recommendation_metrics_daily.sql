{#
    The recommendations per day x route x strategy x experiment x variant x model_version: how
    often shown items were viewed, carted and bought, and the revenue they brought. A day is
    the impression's (served_date): the outcomes of an impression count on the day it was
    served, even when they came after midnight. The rates divide by impressed items.
#}

with

outcomes as (

    select * from {{ ref('recommendation_outcomes') }}

),

aggregated as (

    select
        served_date,
        route,
        strategy,
        experiment,
        variant,
        model_version,
        count(distinct impression_id) as n_impressions,
        count(*) as n_impressed_items,
        sum(case when is_viewed then 1 else 0 end) as n_attributed_views,
        sum(case when is_added_to_cart then 1 else 0 end) as n_attributed_carts,
        sum(case when is_purchased then 1 else 0 end) as n_attributed_purchases,
        {{ exact_sum('revenue') }} as attributed_revenue

    from outcomes
    group by served_date, route, strategy, experiment, variant, model_version

),

final as (

    select
        cast(served_date as date) as served_date,
        cast(route as string) as route,
        cast(strategy as string) as strategy,
        cast(experiment as string) as experiment,
        cast(variant as string) as variant,
        cast(model_version as string) as model_version,
        cast(n_impressions as bigint) as n_impressions,
        cast(n_impressed_items as bigint) as n_impressed_items,
        cast(n_attributed_views as bigint) as n_attributed_views,
        cast(n_attributed_carts as bigint) as n_attributed_carts,
        cast(n_attributed_purchases as bigint) as n_attributed_purchases,
        cast(n_attributed_views as double) / n_impressed_items as ctr,
        cast(n_attributed_carts as double) / n_impressed_items as add_to_cart_rate,
        cast(n_attributed_purchases as double) / n_impressed_items as purchase_rate,
        cast(attributed_revenue as double) as attributed_revenue

    from aggregated

)

select * from final
