{#
    One row per experiment x visitor: the unit of the experiments' analysis (a visitor's
    impressions across the experiment, as of the cutoff). A visitor seen in more than one
    variant of an experiment (the file's weights changed while it ran) keeps one row, with
    n_variants > 1 and no variant: the analysis leaves such visitors out and counts them.
#}

with

outcomes as (

    select * from {{ ref('recommendation_outcomes') }}

),

experiment_outcomes as (

    select * from outcomes
    where
        experiment is not null
        and variant is not null
        and visitor_id is not null

),

visitors_aggregated as (

    select
        experiment,
        visitor_id,
        count(distinct variant) as n_variants,
        min(variant) as first_variant,
        count(distinct impression_id) as n_impressions,
        count(*) as n_impressed_items,
        sum(case when is_viewed then 1 else 0 end) as n_attributed_views,
        sum(case when is_purchased then 1 else 0 end) as n_attributed_purchases,
        {{ exact_sum('revenue') }} as revenue

    from experiment_outcomes
    group by experiment, visitor_id

),

final as (

    select
        cast(experiment as string) as experiment,
        cast(visitor_id as bigint) as visitor_id,
        cast(case when n_variants = 1 then first_variant end as string) as variant,
        cast(n_variants as integer) as n_variants,
        cast(n_impressions as bigint) as n_impressions,
        cast(n_impressed_items as bigint) as n_impressed_items,
        cast(n_attributed_views as bigint) as n_attributed_views,
        cast(n_attributed_purchases as bigint) as n_attributed_purchases,
        cast(case when n_attributed_purchases > 0 then 1 else 0 end as integer) as has_purchase,
        cast(revenue as double) as revenue

    from visitors_aggregated

)

select * from final
