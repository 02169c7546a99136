{#
    The similar items the ML step wrote back (source ml.als_similar_items); no casts: the
    contract checks that the table has the declared types. Empty, with the same columns,
    before the first training (macro ml_source).
#}

with

source as (

    {{ ml_source('als_similar_items') }}

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
