{#
    Interleaving: one row per experiment x variant x interleaving policy
    (`interleave:<a>,<b>`, each shown item labelled with the team, a or b, it came from). Each
    visitor's attributed views of shown items are credited to the items' teams; the visitor
    prefers the team with more credited views, or ties. Shares are of the visitors with at
    least one credited view (visitors without any are counted apart), and the sign test asks
    whether a and b are preferred equally often, ties left out: two-sided, the normal
    approximation of the binomial with a continuity correction (within ~0.01 of the exact
    binomial test from ~20 deciding visitors; null with none).
#}

with

outcomes as (

    select * from {{ ref('recommendation_outcomes') }}

),

visitors as (

    select * from {{ ref('int_experiment_visitors') }}

),

interleaved as (

    select
        outcomes.experiment,
        outcomes.variant,
        outcomes.policy,
        outcomes.visitor_id,
        outcomes.team,
        outcomes.is_viewed,
        {{ dbt.split_part("replace(outcomes.policy, 'interleave:', '')", "','", 1) }} as team_a,
        {{ dbt.split_part("replace(outcomes.policy, 'interleave:', '')", "','", 2) }} as team_b

    from outcomes
    inner join visitors
        on outcomes.experiment = visitors.experiment
        and outcomes.visitor_id = visitors.visitor_id
    where
        outcomes.policy like 'interleave:%'
        and visitors.n_variants = 1

),

credits_per_visitor as (

    select
        experiment,
        variant,
        policy,
        team_a,
        team_b,
        visitor_id,
        sum(case when is_viewed and team = team_a then 1 else 0 end) as n_views_a,
        sum(case when is_viewed and team = team_b then 1 else 0 end) as n_views_b

    from interleaved
    group by experiment, variant, policy, team_a, team_b, visitor_id

),

preferences as (

    select
        experiment,
        variant,
        policy,
        team_a,
        team_b,
        count(*) as n_visitors,
        sum(case when n_views_a + n_views_b > 0 then 1 else 0 end) as n_visitors_with_views,
        sum(case when n_views_a > n_views_b then 1 else 0 end) as n_prefer_a,
        sum(case when n_views_b > n_views_a then 1 else 0 end) as n_prefer_b,
        sum(case when n_views_a = n_views_b and n_views_a > 0 then 1 else 0 end) as n_ties,
        sum(n_views_a) as n_views_a,
        sum(n_views_b) as n_views_b

    from credits_per_visitor
    group by experiment, variant, policy, team_a, team_b

),

sign_tests as (

    select
        *,
        case
            when n_prefer_a + n_prefer_b > 0
                then
                    greatest(abs(n_prefer_a - (n_prefer_a + n_prefer_b) / 2.0) - 0.5, 0)
                    / (sqrt(cast(n_prefer_a + n_prefer_b as double)) / 2.0)
        end as sign_test_z

    from preferences

),

final as (

    select
        cast(experiment as string) as experiment,
        cast(variant as string) as variant,
        cast(policy as string) as policy,
        cast(team_a as string) as team_a,
        cast(team_b as string) as team_b,
        cast(n_visitors as bigint) as n_visitors,
        cast(n_visitors_with_views as bigint) as n_visitors_with_views,
        cast(n_prefer_a as bigint) as n_prefer_a,
        cast(n_prefer_b as bigint) as n_prefer_b,
        cast(n_ties as bigint) as n_ties,
        cast(n_prefer_a as double) / nullif(n_visitors_with_views, 0) as share_prefer_a,
        cast(n_prefer_b as double) / nullif(n_visitors_with_views, 0) as share_prefer_b,
        cast(n_ties as double) / nullif(n_visitors_with_views, 0) as share_ties,
        cast(n_views_a as bigint) as n_views_a,
        cast(n_views_b as bigint) as n_views_b,
        cast({{ two_sided_normal_p_value('sign_test_z') }} as double) as sign_test_p_value

    from sign_tests

)

select * from final
