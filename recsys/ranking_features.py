"""The ranking features' names, one definition for dbt, the snapshot and the API.

`FEATURE_COLUMNS` are the columns of dbt's `ranking_features` mart after its keys (visitor_id,
item_id), in the mart's order: what the ranker is trained on, what a snapshot's ranker is
checked against, and what the API computes at request time. A test compares them with the
mart's contract (`dbt_project/models/ranking/ranking_features.yml`), so that a column added on
one side only fails the suite.

`ITEM_FEATURES` and `VISITOR_FEATURES` say where the item and visitor features come from: the
column of the `item_features` / `visitor_features` mart and the value that `ranking_features`
gives when the item or visitor is unknown or the value null (None: it stays missing). The
snapshot carries those mart columns (models_ml/snapshot.py), the API loads and defaults them
from these tables, and a test reads the same mapping out of `ranking_features.sql`.
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

# feature -> (item_features column, default); `category_id`, `root_category_id` (-1) and
# `is_available` (true) are item features too, kept apart: the API looks items up by them
ITEM_FEATURES: dict[str, tuple[str, float | None]] = {
    "price": ("price", None),
    "item_views_7d": ("n_views_7d", 0),
    "item_views_30d": ("n_views_30d", 0),
    "item_views_all": ("n_views_all", 0),
    "item_carts_all": ("n_carts_all", 0),
    "item_purchases_all": ("n_purchases_all", 0),
    "item_cart_rate": ("cart_rate", None),
    "item_purchase_rate": ("purchase_rate", None),
    "item_trend_7d": ("trend_7d", None),
    "item_popularity_score": ("popularity_score", 0),
    "item_days_since_last_event": ("days_since_last_event", None),
}
# feature -> (visitor_features column, default)
VISITOR_FEATURES: dict[str, tuple[str, float | None]] = {
    "visitor_events": ("n_events", 0),
    "visitor_sessions": ("n_sessions", 0),
    "visitor_distinct_items": ("n_distinct_items", 0),
    "visitor_carts": ("n_carts", 0),
    "visitor_purchases": ("n_purchases", 0),
    "visitor_recency_days": ("recency_days", None),
    "visitor_tenure_days": ("tenure_days", None),
    "visitor_top_category_share": ("top_category_share", None),
}
