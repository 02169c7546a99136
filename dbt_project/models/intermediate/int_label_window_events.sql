{#
    Events in the label window (cutoff, label_end_at], cut into sessions per visitor the way
    int_events_sessionized cuts the history (macro sessionize; sessions are numbered from 1
    inside the window). With int_events_sessionized's cutoff filter, the one place that decides
    which events are after the cutoff: ranking_labels, the evaluation's visitors and its session
    steps all read it. Empty unless var label_end_at is set.
#}

with

events as (

    select * from {{ ref('stg_retailrocket__events') }}

),

events_in_label_window as (

    select * from events
    {% if label_end_at() is none %}
    where false
    {% else %}
    where
        event_at > {{ cutoff_at() }}
        and event_at <= {{ label_end_at() }}
    {% endif %}

),

{{ sessionize('events_in_label_window') }},

final as (

    select * from events_sessionized

)

select * from final
