with

source as (

    select * from {{ source('retailrocket', 'item_properties') }}

),

renamed as (

    select
        {{ epoch_ms_to_timestamp('timestamp') }} as property_at,
        cast(itemid as bigint) as item_id,
        cast(property as string) as property_name,
        cast(value as string) as property_value

    from source

),

parsed as (

    select
        property_at,
        item_id,
        property_name,
        property_value,

        case
            when property_name = 'categoryid'
                then {{ dbt.safe_cast('property_value', 'bigint') }}
        end as category_id,

        case
            when property_name = 'available' and property_value in ('0', '1')
                then property_value = '1'
        end as is_available,

        {{ first_numeric_token('property_value') }} as numeric_value

    from renamed

)

select * from parsed
