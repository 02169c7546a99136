-- Items that turn views into purchases best, as of the cutoff. Rates are the smoothed ones of
-- item_features, so an item with three views and one purchase does not top the list; a
-- minimum number of views keeps the list to items with real evidence.

{% set min_views = 20 %}
{% set top_n = 100 %}

with

item_features as (

    select * from {{ ref('item_features') }}

),

categories as (

    select * from {{ ref('categories') }}

),

items_with_evidence as (

    select *
    from item_features
    where n_views_all >= {{ min_views }}

),

final as (

    select
        items_with_evidence.item_id,
        items_with_evidence.category_id,
        categories.category_path,
        items_with_evidence.n_views_all,
        items_with_evidence.n_carts_all,
        items_with_evidence.n_purchases_all,
        items_with_evidence.cart_rate,
        items_with_evidence.purchase_rate,
        items_with_evidence.trend_7d,
        rank() over (order by items_with_evidence.purchase_rate desc) as conversion_rank

    from items_with_evidence
    left join categories
        on items_with_evidence.category_id = categories.category_id

)

select * from final
where conversion_rank <= {{ top_n }}
order by conversion_rank, item_id
