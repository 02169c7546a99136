{#
    One row per category reachable from a root of the category tree, with its root, its depth
    (roots are 0) and its path from the root as ids joined by '/' (e.g. '231/1009/1613').
    A category whose parent is missing from the tree counts as a root. The depth guard stops the
    recursion on a cycle (categories on a cycle are then left out).
#}

with recursive

category_tree as (

    select * from {{ ref('stg_retailrocket__category_tree') }}

),

roots as (

    select
        child.category_id,
        child.parent_category_id

    from category_tree as child
    left join category_tree as parent
        on child.parent_category_id = parent.category_id
    where parent.category_id is null

),

category_paths as (

    select
        roots.category_id,
        roots.parent_category_id,
        roots.category_id as root_category_id,
        0 as depth,
        cast(roots.category_id as varchar) as category_path

    from roots

    union all

    select
        child.category_id,
        child.parent_category_id,
        category_paths.root_category_id,
        category_paths.depth + 1 as depth,
        {{ dbt.concat([
            "category_paths.category_path",
            "'/'",
            "cast(child.category_id as varchar)",
        ]) }} as category_path

    from category_paths
    inner join category_tree as child
        on category_paths.category_id = child.parent_category_id
    where category_paths.depth < 64

),

final as (

    select
        category_id,
        parent_category_id,
        root_category_id,
        cast(depth as integer) as depth,
        category_path

    from category_paths

)

select * from final
