{# The session key, '<visitor_id>-<session_number>' (e.g. '42-3'), built in one place. #}
{% macro build_session_id(visitor_id, session_number) -%}
    {{ dbt.concat([
        "cast(" ~ visitor_id ~ " as string)",
        "'-'",
        "cast(" ~ session_number ~ " as string)",
    ]) }}
{%- endmacro %}


{#
    The CTEs that cut the events of CTE `events` into sessions per visitor, ending in
    `events_sessionized` (the columns of int_events_sessionized). One definition for every
    window: the features' history (int_events_sessionized) and the label window
    (int_label_window_events), so that both cut and order sessions the same way.

    A new session starts with a visitor's first event and after every gap of strictly more than
    var session_gap_minutes. Ties on the same timestamp are ordered by event_id so that the
    numbering is deterministic. The second pass orders by the integer visitor_event_number from
    the first rather than sorting on (event_at, event_id) again, and derives the position in the
    session from it instead of a third window partitioned by session: ~1/3 faster on 2.75M
    events.
#}
{% macro sessionize(events) -%}

events_ordered as (

    select
        *,
        lag(event_at) over visitor_timeline as previous_event_at,
        row_number() over visitor_timeline as visitor_event_number

    from {{ events }}
    window visitor_timeline as (
        partition by visitor_id
        order by event_at, event_id
    )

),

events_with_gaps as (

    select
        *,
        {{ seconds_between('previous_event_at', 'event_at') }} as seconds_since_previous_event

    from events_ordered

),

events_flagged as (

    select
        *,
        case
            when previous_event_at is null then 1
            when seconds_since_previous_event > {{ var('session_gap_minutes') }} * 60 then 1
            else 0
        end as is_session_start

    from events_with_gaps

),

events_numbered as (

    select
        *,
        sum(is_session_start) over visitor_events_so_far as session_number,
        max(case when is_session_start = 1 then visitor_event_number end)
            over visitor_events_so_far as session_start_event_number

    from events_flagged
    window visitor_events_so_far as (
        partition by visitor_id
        order by visitor_event_number
        rows between unbounded preceding and current row
    )

),

events_sessionized as (

    select
        event_id,
        event_at,
        visitor_id,
        {{ build_session_id('visitor_id', 'session_number') }} as session_id,
        cast(session_number as integer) as session_number,
        cast(visitor_event_number - session_start_event_number + 1 as integer)
            as session_event_number,
        seconds_since_previous_event,
        event_type,
        item_id,
        transaction_id,
        impression_id

    from events_numbered

)

{%- endmacro %}
