{#
    The similar items the ML step wrote back (source ml.als_similar_items); no casts: the
    contract checks that the table has the declared types. Empty before the first training.
#}

with

source as (

    {% if ml_table_ready('als_similar_items') %}
    select * from {{ source('ml', 'als_similar_items') }}
    {% else %}
    select
        cast(null as bigint) as item_id,
        cast(null as bigint) as similar_item_id,
        cast(null as double) as similarity,
        cast(null as integer) as similarity_rank,
        cast(null as varchar) as feature_version
    where false
    {% endif %}

),

renamed as (

    select
        item_id,
        similar_item_id,
        similarity,
        similarity_rank,
        feature_version

    from source

)

select * from renamed
