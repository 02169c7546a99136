{#
    The visitors with an event in the label window (cutoff, label_end_at]: who gets candidates
    when ALS is fitted for training labels or for the evaluation, since only they can have a
    label. Empty unless var label_end_at is set.
#}

with

events as (

    select * from {{ ref('int_label_window_events') }}

),

visitors as (

    select
        visitor_id,
        count(*) as n_events,
        count(distinct session_id) as n_sessions,
        min(event_at) as first_event_at,
        max(event_at) as last_event_at

    from events
    group by visitor_id

),

final as (

    select
        cast(visitor_id as bigint) as visitor_id,
        cast(n_events as bigint) as n_events,
        cast(n_sessions as bigint) as n_sessions,
        cast(first_event_at as timestamp) as first_event_at,
        cast(last_event_at as timestamp) as last_event_at

    from visitors

)

select * from final
