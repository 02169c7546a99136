"""The ranking features' names, one definition for dbt, the snapshot and the API.

`FEATURE_COLUMNS` are the columns of dbt's `ranking_features` mart after its keys (visitor_id,
item_id), in the mart's order: what the ranker is trained on, what a snapshot's ranker is
checked against, and what the API computes at request time. A test compares them with the
mart's contract (`dbt_project/models/ranking/ranking_features.yml`), so that a column added on
one side only fails the suite.
"""

from __future__ import annotations

KEY_COLUMNS = ("visitor_id", "item_id")
FEATURE_COLUMNS = (
    "als_score",
    "als_rank",
    "is_seen",
    "candidate_source",
    "category_id",
    "root_category_id",
    "is_available",
    "price",
    "item_views_7d",
    "item_views_30d",
    "item_views_all",
    "item_carts_all",
    "item_purchases_all",
    "item_cart_rate",
    "item_purchase_rate",
    "item_trend_7d",
    "item_popularity_score",
    "item_days_since_last_event",
    "visitor_events",
    "visitor_sessions",
    "visitor_distinct_items",
    "visitor_carts",
    "visitor_purchases",
    "visitor_recency_days",
    "visitor_tenure_days",
    "visitor_top_category_share",
    "has_viewed_item",
    "has_carted_item",
    "has_purchased_item",
    "pair_events",
    "pair_weight",
    "days_since_item_interaction",
    "category_events",
    "category_affinity_share",
    "category_affinity_score",
    "has_carted_in_category",
    "is_top_category",
    "days_since_category_event",
)
