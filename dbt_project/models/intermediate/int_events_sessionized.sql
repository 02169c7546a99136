{#
    Events at or before the cutoff, cut into sessions per visitor (macro sessionize: a new
    session after every gap of strictly more than var session_gap_minutes; ties ordered by
    event_id).

    Materialized as a table (the intermediate folder is views): the sessionization is a window
    over every event, which the events mart and the sessionization tests would otherwise each
    compute again.
#}

{{ config(materialized='table') }}

with

events as (

    select * from {{ ref('stg_retailrocket__events') }}

),

events_before_cutoff as (

    select * from events
    where event_at <= {{ cutoff_at() }}

),

{{ sessionize('events_before_cutoff') }},

final as (

    select * from events_sessionized

)

select * from final
