{#
    One row per category reachable from a root of the category tree, with its root, its depth
    (roots are 0) and its path from the root as ids joined by '/' (e.g. '231/1009/1613').
    A category whose parent is missing from the tree counts as a root. The depth guard stops the
    recursion on a cycle (categories on a cycle, or below one, are then left out). The CTE
    category_paths is a recursive one where the engine has them (macros/categories.sql).
#}

{{ recursive_with() }}

category_tree as (

    select * from {{ ref('stg_retailrocket__category_tree') }}

),

{{ category_paths_cte('category_tree', max_depth=64) }},

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
