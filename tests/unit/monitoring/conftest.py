"""Fixtures of the monitoring export and service tests: a temporary local lake and a report of
the shape `recsys monitor` writes (monitoring.run.assemble plus the policy's decision record)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from recsys.lake import Lake
from recsys.settings import Settings

SNAPSHOT_OLD = "20261120T120000Z-0123456789abcdef"
SNAPSHOT_NEW = "20261130T120000Z-fedcba9876543210"

REPORT: dict[str, Any] = {
    "reference": {"feature_version": "fv-20261130", "snapshot_version": SNAPSHOT_NEW},
    "current": {"feature_version": "fv-20261202"},
    "drift": {
        "status": "warn",
        "features": {
            "price": {
                "kind": "numeric",
                "psi": 0.12,
                "ks": 0.08,
                "status": "warn",
                "n_reference": 1000,  # the writer's extra keys: tolerated, not exported
                "n_current": 900,
            },
            "n_views": {"kind": "numeric", "psi": 0.01, "ks": 0.02, "status": "ok"},
            "top_category": {"kind": "categorical", "psi": 0.3, "ks": None, "status": "fail"},
        },
        "event_mix": {"psi": 0.02, "status": "ok"},
        "categories": {"psi": 0.15, "status": "warn"},
    },
    "live_performance": [
        {
            "snapshot_version": SNAPSHOT_OLD,
            "day": 0,
            "ndcg@10": 0.2,
            "recall@20": 0.3,
            "n_visitors": 400,
        },
        {
            "snapshot_version": SNAPSHOT_NEW,
            "day": 0,
            "ndcg@10": 0.28,
            "recall@20": 0.4,
            "n_visitors": 300,
        },
        {
            "snapshot_version": SNAPSHOT_NEW,
            "day": 1,
            "ndcg@10": 0.24,
            "recall@20": 0.35,
            "n_visitors": 250,
        },
    ],
    "offline": {
        SNAPSHOT_NEW: {"ndcg@10": 0.3, "recall@20": 0.45},
        SNAPSHOT_OLD: {"ndcg@10": None, "recall@20": None},
    },
    "freshness": {
        "events_lag_seconds": 600.0,
        "events_status": "pass",
        "impressions_lag_seconds": None,
        "impressions_status": None,
        "snapshot_age_seconds": 172800.0,
    },
    "volume": {"hour": "2026-12-02 10:00:00+00:00", "ratio": 0.9, "status": "ok"},
    "business": {"day": "2026-12-01", "ctr": 0.05, "conversion_rate": 0.02, "revenue": 1234.5},
    "retrain": {
        "decision": True,
        "reasons": ["drift", "weekly"],
        "details": ["drift fails (top_category)", "the last training was 7.2 days ago"],
        "held": [],
        "held_details": [],
        "cooldown_until": None,
        "decided_at": "2026-12-02T12:00:00+00:00",
        "policy": {"ndcg_drop": 0.2, "min_live_visitors": 100, "cooldown_hours": 24.0},
    },
    "generated_at": "2026-12-02T12:00:00+00:00",
    "a_key_from_a_newer_writer": {"anything": [1, 2, 3]},
}


@pytest.fixture
def report() -> dict[str, Any]:
    """A fresh copy of the sample report (tests change it)."""
    return copy.deepcopy(REPORT)


@pytest.fixture
def mon_settings(tmp_path: Path) -> Settings:
    """Settings on a temporary data dir, whatever the environment says; no background poll."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        recsys_data_dir=tmp_path / "data",
        recsys_lake_uri=None,
        recsys_monitoring_poll_seconds=3600.0,
        recsys_monitoring_webhook_token=None,
    )


@pytest.fixture
def mon_lake(mon_settings: Settings) -> Lake:
    return Lake.from_settings(mon_settings)
