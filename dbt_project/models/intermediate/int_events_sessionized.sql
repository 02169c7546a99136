{#
    Events at or before the cutoff, cut into sessions per visitor (macro sessionize: a new
    session after every gap of strictly more than var session_gap_minutes; ties ordered by
    event_id).
#}

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
