{#
    One row per watched feature: how far the current build's distribution moved from the
    reference build's (PSI over drift_feature_profiles' bins; for numeric features also the
    two-sample Kolmogorov-Smirnov statistic over every value), and the verdict.

    PSI = sum over bins of (c - r) * ln(c / r), c and r the current and reference shares, each
    floored at 1e-4 (drift_share_floor) so that an empty bin stays finite. KS = max over values x
    of |F_ref(x) - F_cur(x)|, the empirical distribution functions over non-null values
    (scipy.stats.ks_2samp's statistic).

    Thresholds account for the sample size: two samples of one distribution show a PSI of
    about chi-squared(bins - 1) * (1/n_ref + 1/n_cur), and a KS of up to
    c(alpha) * sqrt((n + m) / (n * m)), by noise alone. Each applied threshold is the larger of
    its var (drift_psi_warn, ...) and that noise floor at var drift_noise_alpha (0.001).
#}

{%- set psi_warn, psi_fail = drift_threshold('psi', 'warn'), drift_threshold('psi', 'fail') %}
{%- set ks_warn, ks_fail = drift_threshold('ks', 'warn'), drift_threshold('ks', 'fail') %}

with

builds as (

    select * from {{ ref('drift_builds') }}

),

profiles as (

    select * from {{ ref('drift_feature_profiles') }}

),

{#- current_<mart>, reference_<mart> and <mart>_of_both_builds for the four feature marts,
    then feature_values (role, feature, value_number, value_category): macros/drift.sql #}
{{ drift_feature_values_ctes('builds') }},

comparison as (

    select
        reference_build.feature_version as reference_version,
        current_build.feature_version as current_version

    from builds as reference_build
    inner join builds as current_build
        on reference_build.role = 'reference'
        and current_build.role = 'current'

),

bins_paired as (

    select
        reference_profiles.feature,
        reference_profiles.kind,
        reference_profiles.source_mart,
        reference_profiles.source_column,
        reference_profiles.bin_index,
        reference_profiles.n_rows as n_reference,
        current_profiles.n_rows as n_current,
        reference_profiles.n_rows_in_bin as n_reference_in_bin,
        current_profiles.n_rows_in_bin as n_current_in_bin,
        reference_profiles.share as reference_share,
        current_profiles.share as current_share

    from profiles as reference_profiles
    inner join profiles as current_profiles
        on reference_profiles.feature = current_profiles.feature
        and reference_profiles.bin_index = current_profiles.bin_index
    where
        reference_profiles.role = 'reference'
        and current_profiles.role = 'current'

),

psi_per_feature as (

    select
        feature,
        kind,
        source_mart,
        source_column,
        max(n_reference) as n_reference,
        max(n_current) as n_current,
        max(n_reference) - sum(case when bin_index = -1 then n_reference_in_bin else 0 end)
            as n_reference_non_null,
        max(n_current) - sum(case when bin_index = -1 then n_current_in_bin else 0 end)
            as n_current_non_null,
        {#- the bins either build uses: the degrees of freedom of the noise floor, plus one #}
        sum(case when n_reference_in_bin > 0 or n_current_in_bin > 0 then 1 else 0 end) as n_bins,
        {#- null when a build has no rows (its shares are null) #}
        sum({{ drift_psi_term('current_share', 'reference_share') }}) as psi

    from bins_paired
    group by feature, kind, source_mart, source_column

),

numeric_values_counted as (

    select
        feature,
        value_number,
        sum(case when role = 'reference' then 1 else 0 end) as n_reference,
        sum(case when role = 'current' then 1 else 0 end) as n_current

    from feature_values
    where value_number is not null
    group by feature, value_number

),

distribution_functions as (

    {#- F(x) of each build at every value either build has, after the ties at x #}
    select
        feature,
        sum(n_reference) over (
            partition by feature order by value_number rows between unbounded preceding and current row
        ) * 1.0e0 / nullif(sum(n_reference) over (partition by feature), 0) as reference_cdf,
        sum(n_current) over (
            partition by feature order by value_number rows between unbounded preceding and current row
        ) * 1.0e0 / nullif(sum(n_current) over (partition by feature), 0) as current_cdf

    from numeric_values_counted

),

ks_per_feature as (

    select
        feature,
        max(abs(reference_cdf - current_cdf)) as ks

    from distribution_functions
    group by feature

),

thresholds as (

    select
        psi_per_feature.*,
        ks_per_feature.ks,
        case
            when psi_per_feature.n_reference > 0 and psi_per_feature.n_current > 0
                then greatest(
                    {{ psi_warn }},
                    {{ drift_psi_noise_floor(
                        'psi_per_feature.n_bins', 'psi_per_feature.n_reference', 'psi_per_feature.n_current'
                    ) }}
                )
        end as psi_warn_at,
        case
            when psi_per_feature.n_reference > 0 and psi_per_feature.n_current > 0
                then greatest(
                    {{ psi_fail }},
                    {{ drift_psi_noise_floor(
                        'psi_per_feature.n_bins', 'psi_per_feature.n_reference', 'psi_per_feature.n_current'
                    ) }}
                )
        end as psi_fail_at,
        case
            when
                psi_per_feature.kind = 'numeric'
                and psi_per_feature.n_reference_non_null > 0
                and psi_per_feature.n_current_non_null > 0
                then greatest(
                    {{ ks_warn }},
                    {{ drift_ks_noise_floor(
                        'psi_per_feature.n_reference_non_null', 'psi_per_feature.n_current_non_null'
                    ) }}
                )
        end as ks_warn_at,
        case
            when
                psi_per_feature.kind = 'numeric'
                and psi_per_feature.n_reference_non_null > 0
                and psi_per_feature.n_current_non_null > 0
                then greatest(
                    {{ ks_fail }},
                    {{ drift_ks_noise_floor(
                        'psi_per_feature.n_reference_non_null', 'psi_per_feature.n_current_non_null'
                    ) }}
                )
        end as ks_fail_at

    from psi_per_feature
    left join ks_per_feature
        on psi_per_feature.feature = ks_per_feature.feature

),

statuses as (

    select
        *,
        case
            {#- rows in one build and none in the other: nothing left of the distribution #}
            when (n_reference = 0) != (n_current = 0) then 'fail'
            when psi > psi_fail_at or ks > ks_fail_at then 'fail'
            when psi > psi_warn_at or ks > ks_warn_at then 'warn'
            else 'ok'
        end as status

    from thresholds

),

final as (

    select
        cast(statuses.feature as {{ dbt.type_string() }}) as feature,
        cast(statuses.kind as {{ dbt.type_string() }}) as kind,
        cast(statuses.source_mart as {{ dbt.type_string() }}) as source_mart,
        cast(statuses.source_column as {{ dbt.type_string() }}) as source_column,
        cast(comparison.reference_version as {{ dbt.type_string() }}) as reference_version,
        cast(comparison.current_version as {{ dbt.type_string() }}) as current_version,
        cast(statuses.n_reference as bigint) as n_reference,
        cast(statuses.n_current as bigint) as n_current,
        cast(statuses.n_reference_non_null as bigint) as n_reference_non_null,
        cast(statuses.n_current_non_null as bigint) as n_current_non_null,
        cast(statuses.n_bins as integer) as n_bins,
        cast(statuses.psi as double) as psi,
        cast(statuses.ks as double) as ks,
        cast(statuses.psi_warn_at as double) as psi_warn_at,
        cast(statuses.psi_fail_at as double) as psi_fail_at,
        cast(statuses.ks_warn_at as double) as ks_warn_at,
        cast(statuses.ks_fail_at as double) as ks_fail_at,
        cast(statuses.status as {{ dbt.type_string() }}) as status

    from statuses
    cross join comparison

)

select * from final
