{#
    The sessionization's invariants on the data, in one pass over int_events_sessionized (a
    table, so the pass reads it rather than sessionizing the events again): every event has
    its keys; a visitor's sessions are numbered 1..n and a session's events 1..m, without gaps or
    repeats. Returns each visitor or session that breaks them, with what is wrong.
#}

with

events as (

    select * from {{ ref('int_events_sessionized') }}

),

sessions as (

    select
        visitor_id,
        session_id,
        session_number,
        count(*) as n_events,
        count(distinct session_event_number) as n_positions,
        min(session_event_number) as first_position,
        max(session_event_number) as last_position,
        count(*) - count(event_id) as n_events_without_id

    from events
    group by visitor_id, session_id, session_number

),

visitors as (

    select
        visitor_id,
        count(*) as n_sessions,
        count(distinct session_number) as n_session_numbers,
        min(session_number) as first_session_number,
        max(session_number) as last_session_number

    from sessions
    group by visitor_id

),

broken_sessions as (

    select
        visitor_id,
        session_id,
        case
            when session_id is null or session_number is null then 'event without a session'
            when n_events_without_id > 0 then 'event without an event_id'
            else 'session events not numbered 1..n'
        end as problem

    from sessions
    where
        session_id is null
        or session_number is null
        or n_events_without_id > 0
        or first_position <> 1
        or last_position <> n_events
        or n_positions <> n_events

),

broken_visitors as (

    select
        visitor_id,
        cast(null as string) as session_id,
        'sessions not numbered 1..n' as problem

    from visitors
    where
        first_session_number <> 1
        or last_session_number <> n_sessions
        or n_session_numbers <> n_sessions

),

final as (

    select * from broken_sessions
    union all
    select * from broken_visitors

)

select * from final
