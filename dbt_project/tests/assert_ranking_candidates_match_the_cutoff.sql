{#
    ranking_features is built from the candidates ALS wrote as of this build's cutoff (the same
    feature version). Built at another cutoff than the last training's, it has no candidates and
    0 rows, which no other test notices: this one warns, naming both feature versions. Rebuild
    at the candidates' cutoff (their feature version ends in it, %Y%m%dT%H%M%S), or run
    `recsys train` / `recsys publish` for this one. The pipeline's own builds meet it too,
    between a feature build and the ALS fit that follows it; they do not print dbt's output.
#}
{{ config(severity='warn', tags=['ranking']) }}

with

candidates as (

    select
        feature_version,
        count(*) as n_candidates

    from {{ ref('stg_ml__als_candidates') }}
    group by feature_version

),

this_build as (

    select '{{ feature_version() }}' as feature_version

),

final as (

    select
        this_build.feature_version as build_feature_version,
        candidates.feature_version as candidates_feature_version,
        candidates.n_candidates,
        'ranking_features is empty: the candidates are of another cutoff' as problem

    from candidates
    cross join this_build
    where not exists (
        select 1 from candidates as same
        where same.feature_version = this_build.feature_version
    )

)

select * from final
