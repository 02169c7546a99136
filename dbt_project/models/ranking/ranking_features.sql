{#
    Ranking features: one row per visitor x candidate, everything as of the cutoff (the
    candidates were fitted on interactions as of the same cutoff). Labels live apart, in
    ranking_labels, so that nothing here can see past the cutoff.

    Candidates come from four sources (recsys/candidate_sources.py, `candidate_source`): ALS's
    unmet items and the visitor's met ones carry ALS's score and rank; the similar and popular
    ones have no ALS score and rank just after the longest ALS list, as the API ranks an item
    that ALS did not offer.
#}

with

candidates as (

    select
        visitor_id,
        item_id,
        als_score,
        als_rank,
        is_seen,
        candidate_source
    from {{ ref('stg_ml__als_candidates') }}
    -- only candidates fitted as of this build's cutoff: never stale ones from another run
    where feature_version = '{{ feature_version() }}'

),

beyond_als as (

    -- the rank of an item ALS did not offer: after the longest list (100 when there is none)
    select coalesce(max(als_rank), 100) + 1 as als_rank from candidates

),

item_features as (

    select * from {{ ref('item_features') }}

),

visitor_features as (

    select * from {{ ref('visitor_features') }}

),

interactions as (

    select * from {{ ref('interactions') }}

),

visitor_category_affinities as (

    select * from {{ ref('visitor_category_affinities') }}

),

candidates_joined_to_items as (

    select
        candidates.visitor_id,
        candidates.item_id,
        candidates.als_score,
        coalesce(candidates.als_rank, beyond_als.als_rank) as als_rank,
        candidates.is_seen,
        candidates.candidate_source,
        coalesce(item_features.category_id, -1) as category_id,
        coalesce(item_features.root_category_id, -1) as root_category_id,
        coalesce(item_features.is_available, true) as is_available,
        item_features.price,
        coalesce(item_features.n_views_7d, 0) as item_views_7d,
        coalesce(item_features.n_views_30d, 0) as item_views_30d,
        coalesce(item_features.n_views_all, 0) as item_views_all,
        coalesce(item_features.n_carts_all, 0) as item_carts_all,
        coalesce(item_features.n_purchases_all, 0) as item_purchases_all,
        item_features.cart_rate as item_cart_rate,
        item_features.purchase_rate as item_purchase_rate,
        item_features.trend_7d as item_trend_7d,
        coalesce(item_features.popularity_score, 0) as item_popularity_score,
        item_features.days_since_last_event as item_days_since_last_event

    from candidates
    cross join beyond_als
    left join item_features
        on candidates.item_id = item_features.item_id

),

candidates_with_pairs as (

    select
        candidates_joined_to_items.*,
        -- an item ALS did not offer is "seen" when the visitor met it, as ALS defines it
        coalesce(candidates_joined_to_items.is_seen, interactions.visitor_id is not null)
            as is_seen_or_met,
        coalesce(visitor_features.n_events, 0) as visitor_events,
        coalesce(visitor_features.n_sessions, 0) as visitor_sessions,
        coalesce(visitor_features.n_distinct_items, 0) as visitor_distinct_items,
        coalesce(visitor_features.n_carts, 0) as visitor_carts,
        coalesce(visitor_features.n_purchases, 0) as visitor_purchases,
        visitor_features.recency_days as visitor_recency_days,
        visitor_features.tenure_days as visitor_tenure_days,
        visitor_features.top_category_share as visitor_top_category_share,
        coalesce(interactions.n_views, 0) > 0 as has_viewed_item,
        coalesce(interactions.n_carts, 0) > 0 as has_carted_item,
        coalesce(interactions.n_purchases, 0) > 0 as has_purchased_item,
        coalesce(interactions.n_events, 0) as pair_events,
        coalesce(interactions.weight, 0) as pair_weight,
        {{ seconds_between('interactions.last_interaction_at', cutoff_at()) }} / 86400.0
            as days_since_item_interaction,
        coalesce(visitor_category_affinities.n_events, 0) as category_events,
        coalesce(visitor_category_affinities.affinity_share, 0) as category_affinity_share,
        coalesce(visitor_category_affinities.affinity_score, 0) as category_affinity_score,
        coalesce(visitor_category_affinities.n_carts, 0) > 0 as has_carted_in_category,
        visitor_features.top_category_id = candidates_joined_to_items.category_id
            as is_top_category,
        {{ seconds_between('visitor_category_affinities.last_event_at', cutoff_at()) }} / 86400.0
            as days_since_category_event

    from candidates_joined_to_items
    left join visitor_features
        on candidates_joined_to_items.visitor_id = visitor_features.visitor_id
    left join interactions
        on candidates_joined_to_items.visitor_id = interactions.visitor_id
        and candidates_joined_to_items.item_id = interactions.item_id
    left join visitor_category_affinities
        on candidates_joined_to_items.visitor_id = visitor_category_affinities.visitor_id
        and candidates_joined_to_items.category_id = visitor_category_affinities.category_id

),

final as (

    select
        cast(visitor_id as bigint) as visitor_id,
        cast(item_id as bigint) as item_id,
        cast(als_score as double) as als_score,
        cast(als_rank as integer) as als_rank,
        cast(is_seen_or_met as boolean) as is_seen,
        cast(candidate_source as string) as candidate_source,
        cast(category_id as bigint) as category_id,
        cast(root_category_id as bigint) as root_category_id,
        cast(is_available as boolean) as is_available,
        cast(price as double) as price,
        cast(item_views_7d as bigint) as item_views_7d,
        cast(item_views_30d as bigint) as item_views_30d,
        cast(item_views_all as bigint) as item_views_all,
        cast(item_carts_all as bigint) as item_carts_all,
        cast(item_purchases_all as bigint) as item_purchases_all,
        cast(item_cart_rate as double) as item_cart_rate,
        cast(item_purchase_rate as double) as item_purchase_rate,
        cast(item_trend_7d as double) as item_trend_7d,
        cast(item_popularity_score as double) as item_popularity_score,
        cast(item_days_since_last_event as double) as item_days_since_last_event,
        cast(visitor_events as bigint) as visitor_events,
        cast(visitor_sessions as bigint) as visitor_sessions,
        cast(visitor_distinct_items as bigint) as visitor_distinct_items,
        cast(visitor_carts as bigint) as visitor_carts,
        cast(visitor_purchases as bigint) as visitor_purchases,
        cast(visitor_recency_days as double) as visitor_recency_days,
        cast(visitor_tenure_days as double) as visitor_tenure_days,
        cast(visitor_top_category_share as double) as visitor_top_category_share,
        cast(has_viewed_item as boolean) as has_viewed_item,
        cast(has_carted_item as boolean) as has_carted_item,
        cast(has_purchased_item as boolean) as has_purchased_item,
        cast(pair_events as bigint) as pair_events,
        cast(pair_weight as double) as pair_weight,
        cast(days_since_item_interaction as double) as days_since_item_interaction,
        cast(category_events as bigint) as category_events,
        cast(category_affinity_share as double) as category_affinity_share,
        cast(category_affinity_score as double) as category_affinity_score,
        cast(has_carted_in_category as boolean) as has_carted_in_category,
        cast(coalesce(is_top_category, false) as boolean) as is_top_category,
        cast(days_since_category_event as double) as days_since_category_event

    from candidates_with_pairs

)

select * from final
