-- Conversion funnel per root category up to the cutoff: how many sessions view, cart and buy
-- items of each root category, and the step-to-step rates.

with

events as (

    select * from {{ ref('events') }}

),

categories as (

    select * from {{ ref('categories') }}

),

session_steps as (

    select
        root_category_id,
        session_id,
        max(case when event_type = 'view' then 1 else 0 end) as has_view,
        max(case when event_type = 'addtocart' then 1 else 0 end) as has_cart,
        max(case when event_type = 'transaction' then 1 else 0 end) as has_purchase

    from events
    group by root_category_id, session_id

),

funnel as (

    select
        root_category_id,
        count(*) as n_sessions,
        sum(has_view) as n_sessions_viewing,
        sum(has_cart) as n_sessions_carting,
        sum(has_purchase) as n_sessions_buying

    from session_steps
    group by root_category_id

),

final as (

    select
        funnel.root_category_id,
        categories.category_path,
        funnel.n_sessions,
        funnel.n_sessions_viewing,
        funnel.n_sessions_carting,
        funnel.n_sessions_buying,
        funnel.n_sessions_carting * 1.0 / nullif(funnel.n_sessions_viewing, 0) as view_to_cart_rate,
        funnel.n_sessions_buying * 1.0 / nullif(funnel.n_sessions_carting, 0) as cart_to_purchase_rate,
        funnel.n_sessions_buying * 1.0 / nullif(funnel.n_sessions, 0) as session_conversion_rate

    from funnel
    left join categories
        on funnel.root_category_id = categories.category_id

)

select * from final
order by n_sessions desc
