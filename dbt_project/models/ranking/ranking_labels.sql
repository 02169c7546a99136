{#
    Labels for ranker training: one row per visitor x item with an event in the label window
    (cutoff, label_end_at], read from int_label_window_events (the one model that decides what
    is after the cutoff); empty unless the var label_end_at is set. Grade: 3 purchase, 2 cart,
    1 view.
#}

with

events_in_label_window as (

    select * from {{ ref('int_label_window_events') }}

),

labels as (

    select
        visitor_id,
        item_id,
        max(
            case event_type
                when 'transaction' then 3
                when 'addtocart' then 2
                else 1
            end
        ) as label,
        count(*) as n_events

    from events_in_label_window
    group by visitor_id, item_id

),

final as (

    select
        cast(visitor_id as bigint) as visitor_id,
        cast(item_id as bigint) as item_id,
        cast(label as integer) as label,
        cast(n_events as bigint) as n_events

    from labels

)

select * from final
