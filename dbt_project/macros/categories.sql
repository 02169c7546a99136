{#
    `with`, or `with recursive` where the engine needs the word for category_paths_cte()'s
    recursive CTE (Spark's CTE is not recursive: it walks the tree another way).
#}
{% macro recursive_with() -%}
    {{- return(adapter.dispatch('recursive_with', 'recsys')()) -}}
{%- endmacro %}

{% macro default__recursive_with() -%}
    with recursive
{%- endmacro %}

{% macro spark__recursive_with() -%}
    with
{%- endmacro %}


{#
    CTE `category_paths` over the CTE `tree` (category_id, parent_category_id): one row per
    category reachable from a root within `max_depth` levels, with its root, depth (roots 0)
    and path of ids from the root joined by '/'. A root is a category whose parent is not in
    the tree. Categories on a cycle, or below one, reach no root and are left out.

    DuckDB, Trino / Athena and most engines: a recursive CTE down from the roots.
#}
{% macro category_paths_cte(tree, max_depth) -%}
    {{- return(adapter.dispatch('category_paths_cte', 'recsys')(tree, max_depth)) -}}
{%- endmacro %}

{% macro default__category_paths_cte(tree, max_depth) -%}
roots as (

    select
        child.category_id,
        child.parent_category_id

    from {{ tree }} as child
    left join {{ tree }} as parent
        on child.parent_category_id = parent.category_id
    where parent.category_id is null

),

category_paths as (

    select
        roots.category_id,
        roots.parent_category_id,
        roots.category_id as root_category_id,
        0 as depth,
        cast(roots.category_id as string) as category_path

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
            "cast(child.category_id as string)",
        ]) }} as category_path

    from category_paths
    inner join {{ tree }} as child
        on category_paths.category_id = child.parent_category_id
    where category_paths.depth < {{ max_depth }}

)
{%- endmacro %}

{#
    Spark 3.5 has no recursive CTE: each category walks up instead, through a map of
    category -> parent (parents in the tree only), `max_depth` steps at most (a higher-order
    aggregate over a sequence). The chain [category, parent, ..., last] has reached a root when
    the last has no parent in the map; one that has not (a cycle, or deeper than max_depth) is
    left out, as the recursion down from the roots leaves it out.
#}
{% macro spark__category_paths_cte(tree, max_depth) -%}
parent_map as (

    select
        map_from_entries(collect_list(struct(child.category_id, child.parent_category_id))) as parent_of

    from {{ tree }} as child
    inner join {{ tree }} as parent
        on child.parent_category_id = parent.category_id

),

category_chains as (

    select
        {{ tree }}.category_id,
        {{ tree }}.parent_category_id,
        parent_map.parent_of,
        aggregate(
            sequence(1, {{ max_depth }}),
            array({{ tree }}.category_id),
            (chain, step) -> case
                when map_contains_key(parent_map.parent_of, element_at(chain, -1))
                    then concat(chain, array(element_at(parent_map.parent_of, element_at(chain, -1))))
                else chain
            end
        ) as chain

    from {{ tree }}
    cross join parent_map

),

category_paths as (

    select
        category_id,
        parent_category_id,
        element_at(chain, -1) as root_category_id,
        size(chain) - 1 as depth,
        array_join(transform(reverse(chain), id -> cast(id as string)), '/') as category_path

    from category_chains
    where not map_contains_key(parent_of, element_at(chain, -1))

)
{%- endmacro %}
