{#
    One row per experiment x variant x metric: each variant's estimate and its lift over the
    experiment's control, with a 95% interval and a two-sided p-value, and the experiment's
    sample-ratio check. The visitor is the unit (int_experiment_visitors): visitors seen in
    several variants are left out (n_visitors_excluded).

    Metrics:
    - ctr: attributed views / impressed items over the variant's visitors, a ratio of sums.
      Its variance is the delta method's, with visitors as the unit (views and items of one
      visitor are correlated): (s_v^2 - 2 R s_vi + R^2 s_i^2) / (n mean_i^2).
    - conversion_rate: share of visitors with an attributed purchase (a mean of 0/1).
    - revenue_per_visitor: attributed revenue per visitor (a mean).
    Lifts are Welch's: difference of the estimates, standard error sqrt(v_t + v_c) with each
    variance from its own arm (sample variances, n - 1), and the normal distribution for the
    interval and the p-value (not Student's t: at a few hundred visitors an arm the two differ
    in the third decimal of p). Relative lift: the difference over the control's estimate,
    its standard error by the delta method (both estimates uncertain).

    Control: var experiment_controls names it; else the variant called `control`; else the
    alphabetically first variant seen. Sample ratio: Pearson's chi-squared of the visitors per
    variant against var experiment_weights (equal shares when the experiment is not named
    there), flagged at p < 0.001; a variant of weight 0 that has visitors is a mismatch too.
#}

with

visitors as (

    select * from {{ ref('int_experiment_visitors') }}

),

configured_controls as (

    {{ experiment_controls_rows() }}

),

configured_weights as (

    {{ experiment_weights_rows() }}

),

excluded_per_experiment as (

    select
        experiment,
        sum(case when n_variants > 1 then 1 else 0 end) as n_visitors_excluded

    from visitors
    group by experiment

),

visitors_in_one_variant as (

    select * from visitors
    where n_variants = 1

),

variants as (

    select
        experiment,
        variant,
        count(*) as n_visitors,
        sum(n_impressions) as n_impressions,
        sum(n_impressed_items) as n_impressed_items,
        sum(n_attributed_views) as n_attributed_views,
        sum(has_purchase) as n_visitors_with_purchase,
        {{ exact_sum('revenue') }} as revenue,
        avg(cast(n_impressed_items as double)) as mean_items,
        var_samp(cast(n_impressed_items as double)) as variance_items,
        var_samp(cast(n_attributed_views as double)) as variance_views,
        covar_samp(cast(n_attributed_views as double), cast(n_impressed_items as double))
            as covariance_views_items,
        avg(cast(has_purchase as double)) as conversion_rate,
        var_samp(cast(has_purchase as double)) as variance_conversion,
        avg(revenue) as revenue_per_visitor,
        var_samp(revenue) as variance_revenue

    from visitors_in_one_variant
    group by experiment, variant

),

controls as (

    select
        variants.experiment,
        coalesce(
            max(configured_controls.variant),
            max(case when variants.variant = 'control' then variants.variant end),
            min(variants.variant)
        ) as control_variant

    from variants
    left join configured_controls
        on variants.experiment = configured_controls.experiment
    group by variants.experiment

),

-- sample ratio: observed visitors per variant against the expected shares

weighted_experiments as (

    select distinct experiment from configured_weights

),

observed_and_expected as (

    select
        coalesce(variants.experiment, configured_weights.experiment) as experiment,
        coalesce(variants.n_visitors, 0) as n_observed,
        case
            when weighted_experiments.experiment is null then 1.0
            else coalesce(configured_weights.weight, 0)
        end as weight

    from variants
    full outer join configured_weights
        on variants.experiment = configured_weights.experiment
        and variants.variant = configured_weights.variant
    left join weighted_experiments
        on coalesce(variants.experiment, configured_weights.experiment) = weighted_experiments.experiment

),

shares as (

    select
        *,
        sum(n_observed) over (partition by experiment) as n_total,
        weight / nullif(sum(weight) over (partition by experiment), 0) as expected_share

    from observed_and_expected

),

sample_ratios as (

    select
        experiment,
        sum(
            case
                when expected_share > 0
                    then power(n_observed - n_total * expected_share, 2) / (n_total * expected_share)
            end
        ) as chi_squared,
        sum(case when expected_share > 0 then 1 else 0 end) - 1 as degrees_of_freedom,
        sum(case when coalesce(expected_share, 0) = 0 then n_observed else 0 end)
            as n_visitors_unexpected

    from shares
    where experiment in (select variants.experiment from variants)
    group by experiment

),

sample_ratio_tests as (

    select
        experiment,
        chi_squared,
        degrees_of_freedom,
        case
            when degrees_of_freedom >= 1
                then {{ chi_squared_survival('chi_squared', 'degrees_of_freedom') }}
        end as p_value,
        n_visitors_unexpected

    from sample_ratios

),

-- the estimates and their variances, one row per metric

estimates as (

    select
        experiment,
        variant,
        'ctr' as metric,
        cast(n_attributed_views as double) / nullif(n_impressed_items, 0) as estimate,
        (
            variance_views
            - 2 * (cast(n_attributed_views as double) / nullif(n_impressed_items, 0))
            * covariance_views_items
            + power(cast(n_attributed_views as double) / nullif(n_impressed_items, 0), 2)
            * variance_items
        ) / (n_visitors * power(mean_items, 2)) as estimate_variance

    from variants

    union all

    select
        experiment,
        variant,
        'conversion_rate' as metric,
        conversion_rate as estimate,
        variance_conversion / n_visitors as estimate_variance

    from variants

    union all

    select
        experiment,
        variant,
        'revenue_per_visitor' as metric,
        revenue_per_visitor as estimate,
        variance_revenue / n_visitors as estimate_variance

    from variants

),

estimates_joined_to_control as (

    select
        estimates.experiment,
        estimates.variant,
        estimates.metric,
        controls.control_variant,
        estimates.variant = controls.control_variant as is_control,
        estimates.estimate,
        estimates.estimate_variance,
        control_estimates.estimate as control_estimate,
        control_estimates.estimate_variance as control_estimate_variance

    from estimates
    inner join controls
        on estimates.experiment = controls.experiment
    left join estimates as control_estimates
        on estimates.experiment = control_estimates.experiment
        and estimates.metric = control_estimates.metric
        and controls.control_variant = control_estimates.variant

),

lifts as (

    select
        *,
        case when not is_control then estimate - control_estimate end as absolute_lift,
        case
            when not is_control
                then sqrt(estimate_variance + control_estimate_variance)
        end as lift_standard_error,
        case
            when not is_control and control_estimate <> 0
                then estimate / control_estimate - 1
        end as relative_lift,
        case
            when not is_control and control_estimate <> 0
                then sqrt(
                    estimate_variance / power(control_estimate, 2)
                    + power(estimate, 2) * control_estimate_variance / power(control_estimate, 4)
                )
        end as relative_lift_standard_error

    from estimates_joined_to_control

),

tests as (

    select
        *,
        absolute_lift / nullif(lift_standard_error, 0) as z_statistic

    from lifts

),

final as (

    select
        cast(tests.experiment as string) as experiment,
        cast(tests.variant as string) as variant,
        cast(tests.metric as string) as metric,
        cast(tests.control_variant as string) as control_variant,
        cast(tests.is_control as boolean) as is_control,
        cast(variants.n_visitors as bigint) as n_visitors,
        cast(variants.n_impressions as bigint) as n_impressions,
        cast(variants.n_impressed_items as bigint) as n_impressed_items,
        cast(variants.n_attributed_views as bigint) as n_attributed_views,
        cast(variants.n_visitors_with_purchase as bigint) as n_visitors_with_purchase,
        cast(variants.revenue as double) as revenue,
        cast(tests.estimate as double) as estimate,
        cast(sqrt(tests.estimate_variance) as double) as standard_error,
        cast(tests.control_estimate as double) as control_estimate,
        cast(tests.absolute_lift as double) as absolute_lift,
        cast(tests.absolute_lift - {{ z_95() }} * tests.lift_standard_error as double)
            as absolute_lift_ci_low,
        cast(tests.absolute_lift + {{ z_95() }} * tests.lift_standard_error as double)
            as absolute_lift_ci_high,
        cast(tests.relative_lift as double) as relative_lift,
        cast(tests.relative_lift - {{ z_95() }} * tests.relative_lift_standard_error as double)
            as relative_lift_ci_low,
        cast(tests.relative_lift + {{ z_95() }} * tests.relative_lift_standard_error as double)
            as relative_lift_ci_high,
        cast(tests.z_statistic as double) as z_statistic,
        cast({{ two_sided_normal_p_value('tests.z_statistic') }} as double) as p_value,
        cast(excluded_per_experiment.n_visitors_excluded as bigint) as n_visitors_excluded,
        cast(sample_ratio_tests.chi_squared as double) as sample_ratio_chi_squared,
        cast(sample_ratio_tests.degrees_of_freedom as integer) as sample_ratio_degrees_of_freedom,
        cast(sample_ratio_tests.p_value as double) as sample_ratio_p_value,
        cast(
            coalesce(sample_ratio_tests.p_value < 0.001, false)
            or sample_ratio_tests.n_visitors_unexpected > 0
            as boolean
        ) as has_sample_ratio_mismatch

    from tests
    inner join variants
        on tests.experiment = variants.experiment
        and tests.variant = variants.variant
    inner join excluded_per_experiment
        on tests.experiment = excluded_per_experiment.experiment
    inner join sample_ratio_tests
        on tests.experiment = sample_ratio_tests.experiment

)

select * from final
