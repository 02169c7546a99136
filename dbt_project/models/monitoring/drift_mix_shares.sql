{#
    One row per mix dimension x value: the shares of the events in the two windows of
    drift_windows (the var drift_window_days days up to the reference build's cutoff, and up to
    the latest event ingested).
    `event_mix`: by event type (view, addtocart, transaction: each has a row, seen or not).
    `categories`: by root category of the event's item ('-1': an item without a category), the
    reference window's var drift_top_categories largest apart, the rest as `other`.

    Both windows are read from the staged raw events (every event ingested; events are not
    exported with the features: events.yml), their items' root categories from the current
    item_features. psi_term is the value's part of the dimension's PSI (drift_mixes).
#}

{%- set top_categories = drift_top_categories() %}

with

windows as (

    select * from {{ ref('drift_windows') }}

),

events as (

    select * from {{ ref('stg_retailrocket__events') }}

),

item_features as (

    select * from {{ ref('item_features') }}

),

events_in_windows as (

    {#- one item -> root category mapping (the current build's) for both windows, so that only
        what shoppers did can differ #}
    select
        windows.role,
        events.event_type,
        cast(coalesce(item_features.root_category_id, -1) as {{ dbt.type_string() }})
            as root_category

    from events
    inner join windows
        on events.event_at > windows.window_start_at
        and events.event_at <= windows.window_end_at
    left join item_features
        on events.item_id = item_features.item_id

),

event_types as (

    select 'view' as event_type
    union all
    select 'addtocart' as event_type
    union all
    select 'transaction' as event_type

),

event_type_counts as (

    select
        event_type,
        sum(case when role = 'reference' then 1 else 0 end) as n_reference,
        sum(case when role = 'current' then 1 else 0 end) as n_current

    from events_in_windows
    group by event_type

),

event_mix as (

    select
        'event_mix' as dimension,
        coalesce(event_types.event_type, event_type_counts.event_type) as mix_value,
        coalesce(event_type_counts.n_reference, 0) as n_reference,
        coalesce(event_type_counts.n_current, 0) as n_current

    from event_types
    full outer join event_type_counts
        on event_types.event_type = event_type_counts.event_type

),

category_counts as (

    select
        root_category,
        sum(case when role = 'reference' then 1 else 0 end) as n_reference,
        sum(case when role = 'current' then 1 else 0 end) as n_current

    from events_in_windows
    group by root_category

),

categories_ranked as (

    select
        root_category,
        n_reference,
        n_current,
        row_number() over (order by n_reference desc, root_category asc) as category_rank

    from category_counts

),

categories_bucketed as (

    {#- a category the reference window never saw is `other`, however large now #}
    select
        n_reference,
        n_current,
        case
            when n_reference > 0 and category_rank <= {{ top_categories }} then root_category
            else 'other'
        end as mix_value

    from categories_ranked

),

category_mix as (

    select
        'categories' as dimension,
        mix_value,
        sum(n_reference) as n_reference,
        sum(n_current) as n_current

    from categories_bucketed
    group by mix_value

),

mixes as (

    select * from event_mix
    union all
    select * from category_mix

),

shares as (

    select
        dimension,
        mix_value,
        n_reference,
        n_current,
        cast(n_reference as double) / nullif(sum(n_reference) over (partition by dimension), 0)
            as reference_share,
        cast(n_current as double) / nullif(sum(n_current) over (partition by dimension), 0) as current_share

    from mixes

),

final as (

    select
        cast(dimension as {{ dbt.type_string() }}) as dimension,
        cast(mix_value as {{ dbt.type_string() }}) as mix_value,
        cast(n_reference as bigint) as n_reference,
        cast(n_current as bigint) as n_current,
        cast(reference_share as double) as reference_share,
        cast(current_share as double) as current_share,
        cast({{ drift_psi_term('current_share', 'reference_share') }} as double) as psi_term

    from shares
    where {{ drift_has_reference() }}

)

select * from final
