{#
    One build: every mart was last built as of the feature version that feature_builds names. A
    build stopped part-way (killed, or stopped by a failed test) leaves some marts from the new
    build beside others from the old one; this returns each mart that is not from feature_builds'
    build (or has no record at all). See macros/build_records.sql.
#}

{%- set marts = feature_marts() -%}

with

feature_builds as (

    select feature_version from {{ ref('feature_builds') }}

),

marts as (

    {% for mart in marts -%}
    select '{{ mart.identifier }}' as model
    {% if not loop.last %}union all
    {% endif %}
    {%- endfor %}

),

model_builds_ranked as (

    select
        model,
        feature_version,
        row_number() over (partition by model order by built_at desc) as recency
    from {{ target.schema }}.model_builds

),

-- the latest record per model (one row per model on DuckDB; Spark appends one per build)
model_builds as (

    select
        model,
        feature_version
    from model_builds_ranked
    where recency = 1

),

final as (

    select
        marts.model,
        model_builds.feature_version as mart_feature_version,
        feature_builds.feature_version as feature_builds_version

    from marts
    cross join feature_builds
    left join model_builds
        on marts.model = model_builds.model
    where model_builds.feature_version is distinct from feature_builds.feature_version

)

select * from final
