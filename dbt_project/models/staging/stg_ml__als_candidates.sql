{#
    The candidates the ML step wrote back (source ml.als_candidates), renamed for the ranking
    models; no casts: the contract checks that the table has the declared types. Empty, with the
    same columns, before the first training (macro ml_source).
#}

with

source as (

    {{ ml_source('als_candidates') }}

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
