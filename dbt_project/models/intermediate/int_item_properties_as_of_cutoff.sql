{#
    One row per item with a property snapshot at or before the cutoff: the latest category,
    availability and price (property 790) as they were known at the cutoff, each with the time of
    the snapshot it came from. Snapshots after the cutoff are filtered out before aggregating, so
    they can never win. A filtered aggregation (arg_max) rather than a range join keeps this
    linear in the ~20M property rows.

    Materialized as a table (the intermediate folder is views): it is the heaviest step of the
    build and three models read it.
#}

{{ config(materialized='table') }}

with

item_properties as (

    select * from {{ ref('stg_retailrocket__item_properties') }}

),

properties_before_cutoff as (

    select
        item_id,
        property_at,
        category_id,
        is_available,
        case when property_name = '790' then numeric_value end as price

    from item_properties
    where
        property_at <= {{ cutoff_at() }}
        and property_name in ('categoryid', 'available', '790')

),

latest_properties as (

    select
        item_id,
        {{ arg_max('category_id', 'property_at') }} filter (where category_id is not null) as category_id,
        max(property_at) filter (where category_id is not null) as category_updated_at,
        {{ arg_max('is_available', 'property_at') }} filter (where is_available is not null) as is_available,
        max(property_at) filter (where is_available is not null) as availability_updated_at,
        {{ arg_max('price', 'property_at') }} filter (where price is not null) as price,
        max(property_at) filter (where price is not null) as price_updated_at

    from properties_before_cutoff
    group by item_id

)

select * from latest_properties
