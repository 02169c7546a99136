with

source as (

    select * from {{ source('retailrocket', 'events') }}

),

renamed as (

    select
        {{ surrogate_key(['timestamp', 'visitorid', 'event', 'itemid', 'transactionid']) }} as event_id,
        {{ epoch_ms_to_timestamp('timestamp') }} as event_at,
        cast(visitorid as bigint) as visitor_id,
        cast(event as varchar) as event_type,
        cast(itemid as bigint) as item_id,
        cast(transactionid as bigint) as transaction_id

    from source

)

select * from renamed
