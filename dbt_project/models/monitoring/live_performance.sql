{#
    How each published snapshot's lists do on what visitors did after its cutoff, day by day:
    NDCG@10 and recall@20 as models_ml/metrics.py defines them (binary relevance; the ideal DCG
    over min(10, |relevant|); recall divides by |relevant|), the relevant items of a visitor on
    a day being the distinct items of their events of any type that day, seen before the
    cutoff or not. Only visitors with a list in the snapshot and an event that day count.
    Events are read uncut (stg_retailrocket__events), not from the events mart, which stops at
    the feature cutoff. live_performance.yml says which choices match the offline protocol.
#}

with

published_lists as (

    select * from {{ ref('stg_monitoring__published_lists') }}

),

events as (

    select * from {{ ref('stg_retailrocket__events') }}

),

snapshots as (

    -- cutoff and offline figures are the same on every row of a snapshot
    select
        snapshot_version,
        min(cutoff_at) as cutoff_at,
        max(offline_ndcg_at_10) as offline_ndcg_at_10,
        max(offline_recall_at_20) as offline_recall_at_20

    from published_lists
    group by snapshot_version

),

list_visitors as (

    select distinct
        snapshot_version,
        visitor_id

    from published_lists

),

latest_event as (

    select max(event_at) as latest_event_at from events

),

events_after_cutoffs as (

    -- every event after each snapshot's cutoff, with the whole days elapsed since it (an
    -- event exactly on a day's end may come out either side of it: the next CTE settles it)
    select
        snapshots.snapshot_version,
        snapshots.cutoff_at,
        events.event_at,
        events.visitor_id,
        events.item_id,
        cast(
            floor({{ seconds_between('snapshots.cutoff_at', 'events.event_at') }} / 86400)
            as integer
        ) as whole_days_elapsed

    from events
    inner join snapshots
        on events.event_at > snapshots.cutoff_at

),

events_by_day as (

    -- day d is (cutoff + d days, cutoff + d + 1 days]: left-open as the offline windows are
    -- (an event at the cutoff itself is history), so an event exactly on a day's end is that
    -- day's; compared as timestamps, so no floating-point rounding decides it
    select
        snapshot_version,
        visitor_id,
        item_id,
        case
            when event_at <= {{ dbt.dateadd('day', 'whole_days_elapsed', 'cutoff_at') }}
                then whole_days_elapsed - 1
            else whole_days_elapsed
        end as day_number

    from events_after_cutoffs

),

snapshot_days as (

    -- the days of each snapshot with an event in the shop, up to the latest event
    select distinct
        snapshot_version,
        day_number

    from events_by_day

),

relevant_items as (

    -- the distinct items of each list holder's events of the day
    select distinct
        events_by_day.snapshot_version,
        events_by_day.visitor_id,
        events_by_day.day_number,
        events_by_day.item_id

    from events_by_day
    inner join list_visitors
        on events_by_day.snapshot_version = list_visitors.snapshot_version
        and events_by_day.visitor_id = list_visitors.visitor_id

),

relevant_items_ranked as (

    -- each relevant item with its rank in the visitor's list (null: not in the list)
    select
        relevant_items.snapshot_version,
        relevant_items.visitor_id,
        relevant_items.day_number,
        relevant_items.item_id,
        published_lists.item_rank

    from relevant_items
    left join published_lists
        on relevant_items.snapshot_version = published_lists.snapshot_version
        and relevant_items.visitor_id = published_lists.visitor_id
        and relevant_items.item_id = published_lists.item_id

),

visitor_days_scored as (

    select
        snapshot_version,
        visitor_id,
        day_number,
        count(*) as n_relevant,
        sum(
            case when item_rank <= 10 then {{ dcg_discount('item_rank') }} else 0 end
        ) as dcg_at_10,
        sum(case when item_rank <= 20 then 1 else 0 end) as n_hits_at_20

    from relevant_items_ranked
    group by snapshot_version, visitor_id, day_number

),

visitor_day_metrics as (

    select
        snapshot_version,
        visitor_id,
        day_number,
        dcg_at_10 / {{ ideal_dcg('n_relevant', 10) }} as ndcg_at_10,
        cast(n_hits_at_20 as double) / n_relevant as recall_at_20

    from visitor_days_scored

),

daily_metrics as (

    -- the mean over the day's visitors, each visitor weighing the same
    select
        snapshot_version,
        day_number,
        count(*) as n_visitors,
        avg(ndcg_at_10) as ndcg_at_10,
        avg(recall_at_20) as recall_at_20

    from visitor_day_metrics
    group by snapshot_version, day_number

),

final as (

    select
        cast(snapshot_days.snapshot_version as string) as snapshot_version,
        cast(snapshots.cutoff_at as timestamp) as cutoff_at,
        cast(snapshot_days.day_number as integer) as day,  -- noqa: RF04
        cast(
            {{ dbt.dateadd('day', 'snapshot_days.day_number', 'snapshots.cutoff_at') }} as timestamp
        ) as day_start_at,
        cast(
            {{ dbt.dateadd('day', 'snapshot_days.day_number + 1', 'snapshots.cutoff_at') }}
            as timestamp
        ) as day_end_at,
        coalesce(
            latest_event.latest_event_at
            >= {{ dbt.dateadd('day', 'snapshot_days.day_number + 1', 'snapshots.cutoff_at') }},
            false
        ) as is_complete_day,
        cast(coalesce(daily_metrics.n_visitors, 0) as bigint) as n_visitors,
        cast(daily_metrics.ndcg_at_10 as double) as ndcg_at_10,
        cast(daily_metrics.recall_at_20 as double) as recall_at_20,
        cast(snapshots.offline_ndcg_at_10 as double) as offline_ndcg_at_10,
        cast(snapshots.offline_recall_at_20 as double) as offline_recall_at_20,
        cast(
            daily_metrics.ndcg_at_10 / nullif(snapshots.offline_ndcg_at_10, 0) as double
        ) as ndcg_ratio

    from snapshot_days
    inner join snapshots
        on snapshot_days.snapshot_version = snapshots.snapshot_version
    cross join latest_event
    left join daily_metrics
        on snapshot_days.snapshot_version = daily_metrics.snapshot_version
        and snapshot_days.day_number = daily_metrics.day_number

)

select * from final
