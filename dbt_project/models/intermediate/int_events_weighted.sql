{#
    Each event of the history with what it says about the visitor's interest, shared by
    interactions (per item) and visitor_category_affinities (per category) so that they weigh
    alike: event_weight(event_type) from var event_weights, times the time decay
    exp(-ln 2 * age_days / decay_half_life_days) of its age at the cutoff.
#}

with

events as (

    select * from {{ ref('events') }}

),

events_weighted as (

    select
        event_id,
        event_at,
        visitor_id,
        item_id,
        category_id,
        event_type,
        {{ event_weight('event_type') }} as event_weight,
        {{ time_decay(age_days_at_cutoff('event_at')) }} as time_decay

    from events

),

final as (

    select
        *,
        event_weight * time_decay as weight

    from events_weighted

)

select * from final
