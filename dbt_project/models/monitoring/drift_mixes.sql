{#
    One row per mix dimension (event_mix, categories): how far the shares of the events in the
    var drift_window_days days up to the latest event ingested moved from those up to the
    reference cutoff (drift_windows; drift_mix_shares holds them value by value). PSI and the
    sample-size aware thresholds as in drift_features, n being the events of each window.
#}

{%- set psi_warn, psi_fail = drift_threshold('psi', 'warn'), drift_threshold('psi', 'fail') %}

with

builds as (

    select * from {{ ref('drift_builds') }}

),

mix_shares as (

    select * from {{ ref('drift_mix_shares') }}

),

windows as (

    select * from {{ ref('drift_windows') }}

),

comparison as (

    select
        reference_build.feature_version as reference_version,
        current_build.feature_version as current_version,
        reference_window.window_start_at as reference_window_start_at,
        reference_window.window_end_at as reference_window_end_at,
        current_window.window_start_at as current_window_start_at,
        current_window.window_end_at as current_window_end_at

    from builds as reference_build
    inner join builds as current_build
        on reference_build.role = 'reference'
        and current_build.role = 'current'
    inner join windows as reference_window
        on reference_window.role = 'reference'
    inner join windows as current_window
        on current_window.role = 'current'

),

dimensions as (

    {#- both dimensions have a row, even over windows without events #}
    select 'event_mix' as dimension
    union all
    select 'categories' as dimension

),

psi_per_dimension as (

    select
        dimension,
        sum(n_reference) as n_reference,
        sum(n_current) as n_current,
        sum(case when n_reference > 0 or n_current > 0 then 1 else 0 end) as n_values,
        sum(psi_term) as psi

    from mix_shares
    group by dimension

),

thresholds as (

    select
        dimensions.dimension,
        coalesce(psi_per_dimension.n_reference, 0) as n_reference,
        coalesce(psi_per_dimension.n_current, 0) as n_current,
        coalesce(psi_per_dimension.n_values, 0) as n_values,
        psi_per_dimension.psi,
        case
            when psi_per_dimension.n_reference > 0 and psi_per_dimension.n_current > 0
                then greatest(
                    {{ psi_warn }},
                    {{ drift_psi_noise_floor(
                        'psi_per_dimension.n_values', 'psi_per_dimension.n_reference', 'psi_per_dimension.n_current'
                    ) }}
                )
        end as psi_warn_at,
        case
            when psi_per_dimension.n_reference > 0 and psi_per_dimension.n_current > 0
                then greatest(
                    {{ psi_fail }},
                    {{ drift_psi_noise_floor(
                        'psi_per_dimension.n_values', 'psi_per_dimension.n_reference', 'psi_per_dimension.n_current'
                    ) }}
                )
        end as psi_fail_at

    from dimensions
    left join psi_per_dimension
        on dimensions.dimension = psi_per_dimension.dimension

),

statuses as (

    select
        *,
        case
            {#- events in one window and none in the other #}
            when (n_reference = 0) != (n_current = 0) then 'fail'
            when psi > psi_fail_at then 'fail'
            when psi > psi_warn_at then 'warn'
            else 'ok'
        end as status

    from thresholds

),

final as (

    select
        cast(statuses.dimension as {{ dbt.type_string() }}) as dimension,
        cast(comparison.reference_version as {{ dbt.type_string() }}) as reference_version,
        cast(comparison.current_version as {{ dbt.type_string() }}) as current_version,
        cast(comparison.reference_window_start_at as {{ dbt.type_timestamp() }})
            as reference_window_start_at,
        cast(comparison.reference_window_end_at as {{ dbt.type_timestamp() }})
            as reference_window_end_at,
        cast(comparison.current_window_start_at as {{ dbt.type_timestamp() }})
            as current_window_start_at,
        cast(comparison.current_window_end_at as {{ dbt.type_timestamp() }})
            as current_window_end_at,
        cast(statuses.n_reference as bigint) as n_reference,
        cast(statuses.n_current as bigint) as n_current,
        cast(statuses.n_values as integer) as n_values,
        cast(statuses.psi as double) as psi,
        cast(statuses.psi_warn_at as double) as psi_warn_at,
        cast(statuses.psi_fail_at as double) as psi_fail_at,
        cast(statuses.status as {{ dbt.type_string() }}) as status

    from statuses
    cross join comparison

)

select * from final
