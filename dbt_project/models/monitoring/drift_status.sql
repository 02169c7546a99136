{#
    One row: the drift verdict of the current build against the reference, the worst status of
    every feature (drift_features) and every mix (drift_mixes), with the names of the failing
    and warning ones. No row without a reference version.
#}

with

builds as (

    select * from {{ ref('drift_builds') }}

),

features as (

    select * from {{ ref('drift_features') }}

),

mixes as (

    select * from {{ ref('drift_mixes') }}

),

checks as (

    select
        'feature' as check_kind,
        feature as check_name,
        reference_version,
        current_version,
        status

    from features

    union all

    select
        'mix' as check_kind,
        dimension as check_name,
        reference_version,
        current_version,
        status

    from mixes

),

summary as (

    select
        reference_version,
        current_version,
        case
            when sum(case when status = 'fail' then 1 else 0 end) > 0 then 'fail'
            when sum(case when status = 'warn' then 1 else 0 end) > 0 then 'warn'
            else 'ok'
        end as status,
        sum(case when check_kind = 'feature' then 1 else 0 end) as n_features,
        sum(case when check_kind = 'mix' then 1 else 0 end) as n_mixes,
        sum(case when status = 'warn' then 1 else 0 end) as n_warn,
        sum(case when status = 'fail' then 1 else 0 end) as n_fail,
        {{ dbt.listagg(
            "case when status = 'fail' then check_name end", "', '", "order by check_name"
        ) }} as failing_names,
        {{ dbt.listagg(
            "case when status = 'warn' then check_name end", "', '", "order by check_name"
        ) }} as warning_names

    from checks
    group by reference_version, current_version

),

cutoffs as (

    select
        max(case when role = 'reference' then cutoff_at end) as reference_cutoff_at,
        max(case when role = 'current' then cutoff_at end) as current_cutoff_at

    from builds

),

final as (

    select
        cast(summary.reference_version as {{ dbt.type_string() }}) as reference_version,
        cast(summary.current_version as {{ dbt.type_string() }}) as current_version,
        cast(cutoffs.reference_cutoff_at as {{ dbt.type_timestamp() }}) as reference_cutoff_at,
        cast(cutoffs.current_cutoff_at as {{ dbt.type_timestamp() }}) as current_cutoff_at,
        cast(summary.status as {{ dbt.type_string() }}) as status,
        cast(summary.n_features as integer) as n_features,
        cast(summary.n_mixes as integer) as n_mixes,
        cast(summary.n_warn as integer) as n_warn,
        cast(summary.n_fail as integer) as n_fail,
        cast(coalesce(summary.failing_names, '') as {{ dbt.type_string() }}) as failing_names,
        cast(coalesce(summary.warning_names, '') as {{ dbt.type_string() }}) as warning_names

    from summary
    cross join cutoffs

)

select * from final
