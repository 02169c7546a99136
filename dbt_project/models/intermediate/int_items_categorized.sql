{#
    One row per item known at the cutoff, from its events or its property snapshots, with its
    category as of the cutoff placed in the tree. An item with no category snapshot is in the
    unknown category (-1); a category missing from the tree is its own root (depth 0).
#}

with

events as (

    select * from {{ ref('stg_retailrocket__events') }}

),

item_properties as (

    select * from {{ ref('int_item_properties_as_of_cutoff') }}

),

categories as (

    select * from {{ ref('int_categories_pathed') }}

),

items_with_events as (

    select distinct item_id
    from events
    where event_at <= {{ cutoff_at() }}

),

items_known as (

    select item_id from items_with_events
    union
    select item_id from item_properties

),

items_joined_to_properties as (

    select
        items_known.item_id,
        item_properties.category_id as property_category_id,
        item_properties.category_updated_at,
        item_properties.is_available,
        item_properties.availability_updated_at,
        item_properties.price,
        item_properties.price_updated_at

    from items_known
    left join item_properties
        on items_known.item_id = item_properties.item_id

),

items_joined_to_categories as (

    select
        items_joined_to_properties.item_id,
        coalesce(items_joined_to_properties.property_category_id, -1) as category_id,
        coalesce(
            categories.root_category_id,
            items_joined_to_properties.property_category_id,
            -1
        ) as root_category_id,
        coalesce(categories.depth, 0) as category_depth,
        categories.category_id is not null as is_category_in_tree,
        items_joined_to_properties.category_updated_at,
        items_joined_to_properties.is_available,
        items_joined_to_properties.availability_updated_at,
        items_joined_to_properties.price,
        items_joined_to_properties.price_updated_at

    from items_joined_to_properties
    left join categories
        on items_joined_to_properties.property_category_id = categories.category_id

)

select * from items_joined_to_categories
