"""Every metric the monitoring service exports: name, type, help and labels, in one place.

The service (`monitoring.service`) creates its metrics from `METRICS`; the alert rules
(monitoring/prometheus/rules/), the Grafana dashboards (monitoring/grafana/dashboards.py) and
their tests (tests/unit/monitoring/test_configs.py) check every name they use against it, so a
metric renamed here and not there fails a test instead of an empty panel or a silent alert.

Names are the names as exposed: a counter's ends in `_total` (prometheus_client takes a
counter's name with or without the suffix and exposes it with it). Standard library only: the
service, the dashboards and the tests import it without any extra.

Conventions the rules rely on:
- a status is a number: 0 ok, 1 warn, 2 fail (`STATUS_CODES`);
- a gauge with no value to give (no baseline, nothing loaded yet) is NaN, not 0, so that an
  alert comparing it stays quiet and a panel shows a gap rather than a false figure. The one
  exception is `recsys_monitoring_export_timestamp_seconds`, whose staleness alert also fires
  on NaN: a service that never loaded an export must say so.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

MetricType = Literal["gauge", "counter"]


class MetricSpec(NamedTuple):
    name: str  # as exposed (counters end in `_total`)
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()


STATUS_CODES = {"ok": 0, "warn": 1, "fail": 2}
DRIFT_KINDS = ("numeric", "categorical", "mix")  # `mix`: the `event_mix` and `categories` rows
RETRAIN_REASONS = ("drift", "live_ndcg_decay", "stale_snapshot", "weekly")  # monitoring.policy

METRICS: tuple[MetricSpec, ...] = (
    # drift between the reference (the served snapshot's features) and the current features
    MetricSpec(
        "recsys_drift_psi",
        "gauge",
        "Population stability index of a feature (kind numeric or categorical), of the event "
        "type mix (feature event_mix, kind mix) or of the category mix (feature categories, "
        "kind mix), current against reference.",
        ("feature", "kind"),
    ),
    MetricSpec(
        "recsys_drift_ks",
        "gauge",
        "Two-sample Kolmogorov-Smirnov statistic of a numeric feature, current against reference.",
        ("feature",),
    ),
    MetricSpec(
        "recsys_drift_status",
        "gauge",
        "Drift verdict of a feature or mix: 0 ok, 1 warn, 2 fail.",
        ("feature", "kind"),
    ),
    MetricSpec(
        "recsys_drift_overall_status",
        "gauge",
        "Drift verdict over every feature and mix: 0 ok, 1 warn, 2 fail.",
    ),
    # live performance: the latest day of each snapshot's live figures
    MetricSpec(
        "recsys_live_ndcg_at_10",
        "gauge",
        "NDCG@10 of the snapshot's shown lists against what visitors did next, on its latest "
        "day of live traffic.",
        ("snapshot_version",),
    ),
    MetricSpec(
        "recsys_live_recall_at_20",
        "gauge",
        "Recall@20 of the snapshot's lists on its latest day of live traffic.",
        ("snapshot_version",),
    ),
    MetricSpec(
        "recsys_live_visitors",
        "gauge",
        "Visitors behind the snapshot's latest live figures.",
        ("snapshot_version",),
    ),
    MetricSpec(
        "recsys_offline_ndcg_at_10",
        "gauge",
        "NDCG@10 of the snapshot on its offline test window (its manifest).",
        ("snapshot_version",),
    ),
    MetricSpec(
        "recsys_live_ndcg_ratio",
        "gauge",
        "Live NDCG@10 divided by offline NDCG@10 for the snapshot; NaN without an offline figure.",
        ("snapshot_version",),
    ),
    # freshness and volume
    MetricSpec(
        "recsys_events_lag_seconds",
        "gauge",
        "Seconds since the newest raw event.",
    ),
    MetricSpec(
        "recsys_published_snapshot_age_seconds",
        "gauge",
        "Seconds since the served snapshot was published.",
    ),
    MetricSpec(
        "recsys_event_volume_ratio",
        "gauge",
        "Events of the last complete hour divided by the same hour of the week in earlier "
        "weeks; NaN without a baseline.",
    ),
    # business, of the last complete day
    MetricSpec(
        "recsys_business_ctr",
        "gauge",
        "Share of recommendation impressions followed by a click, on the last complete day.",
    ),
    MetricSpec(
        "recsys_business_conversion_rate",
        "gauge",
        "Share of visitors who bought, on the last complete day.",
    ),
    MetricSpec(
        "recsys_business_revenue",
        "gauge",
        "Revenue of the last complete day.",
    ),
    MetricSpec(
        "recsys_business_day_timestamp_seconds",
        "gauge",
        "Unix time of the start of the day the business figures are of.",
    ),
    # the retraining decision (monitoring.policy)
    MetricSpec(
        "recsys_retrain_decision",
        "gauge",
        "The last retraining decision: 1 retrain, 0 not.",
    ),
    MetricSpec(
        "recsys_retrain_reason",
        "gauge",
        "1 for each reason of the last retraining decision (drift, live_ndcg_decay, "
        "stale_snapshot, weekly), 0 for the others.",
        ("reason",),
    ),
    MetricSpec(
        "recsys_retrain_decided_timestamp_seconds",
        "gauge",
        "Unix time of the last retraining decision.",
    ),
    # the service itself
    MetricSpec(
        "recsys_monitoring_export_timestamp_seconds",
        "gauge",
        "Unix time the served monitoring export was made; NaN before one is loaded.",
    ),
    MetricSpec(
        "recsys_monitoring_export_loads_total",
        "counter",
        "Monitoring exports loaded.",
    ),
    MetricSpec(
        "recsys_monitoring_export_load_failures_total",
        "counter",
        "Monitoring exports that could not be loaded, by reason; the last good one stayed.",
        ("reason",),
    ),
    MetricSpec(
        "recsys_monitoring_alerts_received_total",
        "counter",
        "Alert notifications received from Alertmanager's webhook, by alert name and status "
        "(firing or resolved).",
        ("alertname", "status"),
    ),
)

BY_NAME = {spec.name: spec for spec in METRICS}


def exposed_names() -> frozenset[str]:
    """Every series name the service exposes from the catalog (what PromQL can select)."""
    return frozenset(BY_NAME)
