with

source as (

    select * from {{ source('retailrocket', 'category_tree') }}

),

renamed as (

    select
        cast(categoryid as bigint) as category_id,
        cast(parentid as bigint) as parent_category_id

    from source

)

select * from renamed
