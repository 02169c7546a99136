{#
    The two builds of the feature marts that the drift models compare, one row per role:
    `reference` (var monitoring_reference_version: its export in the lake) and `current` (the
    warehouse's marts). No rows without a reference version, so that every drift model builds
    empty.
#}

with

feature_builds as (

    select * from {{ ref('feature_builds') }}

),

reference_feature_builds as (

    select * from {{ drift_reference_relation('feature_builds') }}

),

builds as (

    {#- the reference is named by the folder it was read from (a copied export keeps the
        version it was built as in its feature_builds) #}
    select
        'reference' as role,  -- noqa: RF04
        '{{ drift_reference_version() or "" }}' as feature_version,
        cutoff_at,
        rate_smoothing_views

    from reference_feature_builds

    union all

    select
        'current' as role,  -- noqa: RF04
        feature_version,
        cutoff_at,
        rate_smoothing_views

    from feature_builds

),

final as (

    select
        cast(role as {{ dbt.type_string() }}) as role,  -- noqa: RF04
        cast(feature_version as {{ dbt.type_string() }}) as feature_version,
        cast(cutoff_at as {{ dbt.type_timestamp() }}) as cutoff_at,
        cast(rate_smoothing_views as double) as rate_smoothing_views

    from builds
    where {{ drift_has_reference() }}

)

select * from final
