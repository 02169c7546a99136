"""Training and scoring: ALS candidates, CatBoost ranker, evaluation, snapshot publishing."""
