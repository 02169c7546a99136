-- Distribution of session lengths up to the cutoff, in events and in minutes, with the
-- conversion rate of each bucket.

with

sessions as (

    select * from {{ ref('sessions') }}

),

sessions_bucketed as (

    select
        case
            when n_events = 1 then '1'
            when n_events <= 3 then '2-3'
            when n_events <= 10 then '4-10'
            when n_events <= 30 then '11-30'
            else '31+'
        end as events_bucket,
        case
            when duration_seconds < 60 then '< 1 min'
            when duration_seconds < 5 * 60 then '1-5 min'
            when duration_seconds < 30 * 60 then '5-30 min'
            when duration_seconds < 2 * 60 * 60 then '30 min-2 h'
            else '2 h+'
        end as duration_bucket,
        is_converted

    from sessions

),

final as (

    select
        events_bucket,
        duration_bucket,
        count(*) as n_sessions,
        count(*) * 1.0 / sum(count(*)) over () as share_of_sessions,
        avg(case when is_converted then 1.0 else 0.0 end) as conversion_rate

    from sessions_bucketed
    group by events_bucket, duration_bucket

)

select * from final
order by n_sessions desc
