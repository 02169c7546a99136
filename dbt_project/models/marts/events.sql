with

events as (

    select * from {{ ref('int_events_sessionized') }}

),

items as (

    select * from {{ ref('int_items_categorized') }}

),

events_joined_to_items as (

    select
        events.event_id,
        events.event_at,
        cast(events.event_at as date) as event_date,
        events.visitor_id,
        events.session_id,
        events.session_number,
        events.session_event_number,
        events.event_type,
        events.item_id,
        events.transaction_id,
        events.impression_id,
        coalesce(items.category_id, -1) as category_id,
        coalesce(items.root_category_id, -1) as root_category_id

    from events
    left join items
        on events.item_id = items.item_id

),

final as (

    select
        cast(event_id as string) as event_id,
        cast(event_at as timestamp) as event_at,
        cast(event_date as date) as event_date,
        cast(visitor_id as bigint) as visitor_id,
        cast(session_id as string) as session_id,
        cast(session_number as integer) as session_number,
        cast(session_event_number as integer) as session_event_number,
        cast(event_type as string) as event_type,
        cast(item_id as bigint) as item_id,
        cast(transaction_id as bigint) as transaction_id,
        cast(impression_id as string) as impression_id,
        cast(category_id as bigint) as category_id,
        cast(root_category_id as bigint) as root_category_id

    from events_joined_to_items

)

select * from final
