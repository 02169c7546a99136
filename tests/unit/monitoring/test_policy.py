"""The retraining policy, one row per rule (monitoring/policy.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from monitoring.policy import REASONS, Observation, Policy, decide

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
POLICY = Policy(
    ndcg_drop=0.2,
    min_live_visitors=100,
    max_snapshot_age=timedelta(days=14),
    every=timedelta(days=7),
    cooldown=timedelta(hours=24),
)
# a healthy state: a snapshot published two days ago, no drift, live NDCG on par
HEALTHY = Observation(
    now=NOW,
    drift_status="ok",
    snapshot_version="20261130T120000Z-abcdef01",
    snapshot_published_at=NOW - timedelta(days=2),
    offline_ndcg=0.30,
    live_ndcg=0.29,
    live_visitors=500,
    live_day=1,
    last_retrain_at=NOW - timedelta(days=2, hours=1),
)

CASES = [
    # (id, changes to HEALTHY, retrain?, reasons, held)
    ("healthy", {}, False, [], []),
    ("drift warns only", {"drift_status": "warn"}, False, [], []),
    ("no reference yet", {"drift_status": None}, False, [], []),
    ("drift fails", {"drift_status": "fail", "drift_failing": ("price",)}, True, ["drift"], []),
    ("live ndcg decays", {"live_ndcg": 0.23}, True, ["live_ndcg_decay"], []),
    ("live ndcg just inside", {"live_ndcg": 0.241}, False, [], []),
    ("decay on too few visitors", {"live_ndcg": 0.05, "live_visitors": 99}, False, [], []),
    ("no live figure", {"live_ndcg": None, "live_visitors": 0}, False, [], []),
    ("no offline figure", {"offline_ndcg": None, "live_ndcg": 0.01}, False, [], []),
    (
        "stale snapshot",
        {
            "snapshot_published_at": NOW - timedelta(days=15),
            "last_retrain_at": NOW - timedelta(days=6),
        },
        True,
        ["stale_snapshot"],
        [],
    ),
    (
        "no snapshot at all",
        {"snapshot_version": None, "snapshot_published_at": None, "last_retrain_at": None},
        True,
        ["stale_snapshot"],
        [],
    ),
    (
        "weekly fallback",
        {
            "snapshot_published_at": NOW - timedelta(days=7),
            "last_retrain_at": NOW - timedelta(days=7, hours=1),
        },
        True,
        ["weekly"],
        [],
    ),
    (
        "weekly counts from the last retrain decision, not the snapshot",
        {
            "snapshot_published_at": NOW - timedelta(days=8),
            "last_retrain_at": NOW - timedelta(days=3),
        },
        False,
        [],
        [],
    ),
    (
        "cool-down holds a failing drift",
        {"drift_status": "fail", "last_retrain_at": NOW - timedelta(hours=23)},
        False,
        [],
        ["drift"],
    ),
    (
        "cool-down over",
        {"drift_status": "fail", "last_retrain_at": NOW - timedelta(hours=24)},
        True,
        ["drift"],
        [],
    ),
    (
        "every reason at once",
        {
            "drift_status": "fail",
            "live_ndcg": 0.1,
            "snapshot_published_at": NOW - timedelta(days=20),
            "last_retrain_at": NOW - timedelta(days=20),
        },
        True,
        list(REASONS),
        [],
    ),
]


@pytest.mark.parametrize(
    ("changes", "retrain", "codes", "held"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_policy(changes: dict, retrain: bool, codes: list[str], held: list[str]) -> None:
    decision = decide(replace(HEALTHY, **changes), POLICY)
    assert decision.retrain is retrain
    assert decision.codes == codes
    assert [r.code for r in decision.held] == held
    record = decision.record()
    assert record["decision"] is retrain and record["reasons"] == codes
    assert record["decided_at"] == NOW.isoformat()
    assert len(record["details"]) == len(codes)
    if held:
        assert record["cooldown_until"] == (HEALTHY.now + timedelta(hours=1)).isoformat()
        assert "cool-down" in decision.summary()


def test_every_reason_has_a_row() -> None:
    """The table covers each reason alone, plus the cool-down and the weekly fallback."""
    alone = {tuple(case[3]) for case in CASES if len(case[3]) == 1}
    assert {(code,) for code in REASONS} <= alone


def test_details_name_what_was_seen() -> None:
    decision = decide(
        replace(HEALTHY, drift_status="fail", drift_failing=("price", "item_views_7d")), POLICY
    )
    assert decision.record()["details"] == ["drift fails (price, item_views_7d)"]
    decay = decide(replace(HEALTHY, live_ndcg=0.2), POLICY)
    assert "0.2000" in decay.summary() and "0.3000" in decay.summary()
