{#
    impression_id: lakes ingested before the API logged impressions have no such column in any
    events file (union_by_name then has none to offer), so it is read as null there.
    The event_id of an event without an impression id is the md5 of the same five columns as
    before the column existed, so that ids stay stable across releases; an event with one adds it
    to the key, so that the same click with and without an impression id are two events (the
    ingest keeps both: they are not exact duplicates) without colliding.

    Materialized as a table (the staging folder is views): as a view, the md5 of every raw event
    was computed again by each reader, the unique test on event_id and int_events_sessionized
    among them. Full scale (2.8M events), three alternating builds each: dbt's elapsed time
    20.0-20.9 s as a view, 19.0-20.2 s as a table; `recsys build` 24.2-25.7 -> 23.0-24.4 s.
    `recsys monitor` rebuilds it with the monitoring models (tag monitoring_input), so they
    read every event ingested by then.
#}

{{ config(materialized='table') }}

{%- set events_relation = source('retailrocket', 'events') -%}
{%- set has_impression_id = not execute
    or not lake_table_has_files('events')
    or 'impression_id' in relation_column_names(events_relation) -%}

with

source as (

    select * from {{ events_relation }}

),

renamed as (

    select
        {% if has_impression_id -%}
        case
            when impression_id is null
                then {{ surrogate_key(['timestamp', 'visitorid', 'event', 'itemid', 'transactionid']) }}
            else {{ surrogate_key(['timestamp', 'visitorid', 'event', 'itemid', 'transactionid', 'impression_id']) }}
        end as event_id,
        {%- else -%}
        {{ surrogate_key(['timestamp', 'visitorid', 'event', 'itemid', 'transactionid']) }} as event_id,
        {%- endif %}
        {{ epoch_ms_to_timestamp('timestamp') }} as event_at,
        cast(visitorid as bigint) as visitor_id,
        cast(event as string) as event_type,
        cast(itemid as bigint) as item_id,
        cast(transactionid as bigint) as transaction_id,
        {% if has_impression_id -%}
        cast(impression_id as string) as impression_id
        {%- else -%}
        cast(null as string) as impression_id
        {%- endif %}

    from source

)

select * from renamed
