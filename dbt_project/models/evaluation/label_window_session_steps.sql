{#
    The steps of the label window's sessions that the session method is scored on: one row per
    view of an item that follows a view of another item in the same session (carts and
    purchases in between do not break the step). Sessions are int_label_window_events' (the
    same cut and tie-break as the features' history). A view of the item just viewed is no
    step: there is nothing to predict.
#}

with

events as (

    select * from {{ ref('int_label_window_events') }}

),

views as (

    select
        visitor_id,
        session_id,
        session_event_number,
        event_at,
        item_id

    from events
    where event_type = 'view'

),

views_with_previous as (

    select
        *,
        lag(item_id) over session_views as previous_item_id

    from views
    window session_views as (
        partition by session_id
        order by session_event_number
    )

),

final as (

    select
        cast(visitor_id as bigint) as visitor_id,
        cast(session_id as string) as session_id,
        cast(session_event_number as integer) as session_event_number,
        cast(event_at as timestamp) as event_at,
        cast(previous_item_id as bigint) as previous_item_id,
        cast(item_id as bigint) as next_item_id

    from views_with_previous
    where
        previous_item_id is not null
        and previous_item_id <> item_id

)

select * from final
