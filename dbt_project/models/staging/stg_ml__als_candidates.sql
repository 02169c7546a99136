{#
    The candidates the ML step wrote back (source ml.als_candidates), renamed for the ranking
    models; no casts: the contract checks that the table has the declared types. Empty before
    the first training.
#}

with

source as (

    {% if ml_table_ready('als_candidates') %}
    select * from {{ source('ml', 'als_candidates') }}
    {% else %}
    select
        cast(null as bigint) as visitor_id,
        cast(null as bigint) as item_id,
        cast(null as double) as als_score,
        cast(null as integer) as als_rank,
        cast(null as boolean) as is_seen,
        -- the ML step's name for the column, a keyword in SQL
        cast(null as varchar) as source,  -- noqa: RF04
        cast(null as varchar) as feature_version
    where false
    {% endif %}

),

renamed as (

    select
        visitor_id,
        item_id,
        als_score,
        als_rank,
        is_seen,
        source as candidate_source,
        feature_version

    from source

)

select * from renamed
