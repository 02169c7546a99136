with

categories_pathed as (

    select * from {{ ref('int_categories_pathed') }}

),

items as (

    select * from {{ ref('int_items_categorized') }}

),

categories_outside_tree as (

    {#- categories that items carry but the tree does not know: each its own root -#}
    select distinct
        items.category_id,
        cast(null as bigint) as parent_category_id,
        items.category_id as root_category_id,
        0 as depth,
        cast(items.category_id as string) as category_path,
        false as is_in_tree

    from items
    where
        items.category_id != -1
        and not items.is_category_in_tree

),

unknown_category as (

    select
        -1 as category_id,
        cast(null as bigint) as parent_category_id,
        -1 as root_category_id,
        0 as depth,
        'unknown' as category_path,
        false as is_in_tree

),

categories_unioned as (

    select
        category_id,
        parent_category_id,
        root_category_id,
        depth,
        category_path,
        true as is_in_tree

    from categories_pathed

    union all

    select * from categories_outside_tree

    union all

    select * from unknown_category

),

child_counts as (

    select
        parent_category_id as category_id,
        count(*) as n_children

    from categories_pathed
    group by parent_category_id

),

item_counts as (

    select
        category_id,
        count(*) as n_items

    from items
    group by category_id

),

final as (

    select
        cast(categories_unioned.category_id as bigint) as category_id,
        cast(categories_unioned.parent_category_id as bigint) as parent_category_id,
        cast(categories_unioned.root_category_id as bigint) as root_category_id,
        cast(categories_unioned.depth as integer) as depth,
        cast(categories_unioned.category_path as string) as category_path,
        categories_unioned.is_in_tree,
        coalesce(child_counts.n_children, 0) = 0 as is_leaf,
        cast(coalesce(item_counts.n_items, 0) as bigint) as n_items

    from categories_unioned
    left join child_counts
        on categories_unioned.category_id = child_counts.category_id
    left join item_counts
        on categories_unioned.category_id = item_counts.category_id

)

select * from final
