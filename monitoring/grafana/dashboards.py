"""Grafana dashboards as code, built with Grafana Labs' SDK (grafana-foundation-sdk, Grafana 11.6).

Four dashboards, one JSON file each, for Grafana's file provider
(monitoring/grafana/provisioning/dashboards/dashboards.yml):

- `recsys-service`: the API: traffic, latency and its SLO, errors, caches, snapshots, process;
- `recsys-model`: live NDCG against offline, recall, the retraining decision, drift verdicts;
- `recsys-data`: events and their freshness, drift PSI per feature, the impression log, the
  monitoring export and the alerts the monitoring service received;
- `recsys-business`: click-through, conversion, revenue.

    python -m monitoring.grafana.dashboards [--out DIR]     (make dashboards)

writes them into monitoring/grafana/dashboards/ (git-ignored: the files are built, never
edited or committed). Every query names Prometheus by its provisioned uid (`DATASOURCE`), and
only metrics that exist: the API's (api/metrics.py), the monitoring service's
(monitoring/metrics_catalog.py) and the recording rules (monitoring/prometheus/rules/);
tests/unit/monitoring/test_configs.py checks each query with Prometheus' own parser and every
name in it against those three, through `panel_queries`.
"""

from __future__ import annotations

import argparse
import json
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
)

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
TAGS = ["recsys", "generated"]
# Grafana's own variables in the queries, and what stands for them when a query is checked
# as PromQL outside Grafana
GRAFANA_VARIABLES = {"$__rate_interval": "5m"}

# the latency SLO of monitoring/prometheus/rules/recording.yml: burn rate = error ratio / budget
SLO_ERROR_BUDGET = 0.01
STATUS_MAPPING = ValueMap(
    {
        "0": ValueMappingResult(text="ok", color="green", index=0),
        "1": ValueMappingResult(text="warn", color="orange", index=1),
        "2": ValueMappingResult(text="fail", color="red", index=2),
    }
)


def steps(*pairs: tuple[float | None, str]) -> ThresholdsConfig:
    """Absolute thresholds, from (None, base colour) up."""
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in pairs])
    )


def query(expr: str, legend: str = "") -> Dataquery:
    q = Dataquery().expr(expr).datasource(DATASOURCE)
    return q.legend_format(legend) if legend else q


def with_targets(panel: Timeseries | Stat, queries: Sequence[Dataquery]) -> None:
    for ref_id, q in zip(string.ascii_uppercase, queries, strict=False):
        panel.with_target(q.ref_id(ref_id))


def timeseries(
    title: str,
    description: str,
    unit: str,
    *queries: Dataquery,
    span: int = 12,
    height: int = 8,
    thresholds: ThresholdsConfig | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Timeseries:
    panel = (
        Timeseries()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if thresholds is not None:
        panel.thresholds(thresholds).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        )
    if minimum is not None:
        panel.min(minimum)
    if maximum is not None:
        panel.max(maximum)
    with_targets(panel, queries)
    return panel


def stat(
    title: str,
    description: str,
    unit: str,
    *queries: Dataquery,
    span: int = 6,
    height: int = 5,
    thresholds: ThresholdsConfig | None = None,
    mappings: list[model.ValueMapping] | None = None,
    text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO,
) -> Stat:
    panel = (
        Stat()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(height)
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .text_mode(text_mode)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds or steps((None, "text")))
    )
    if mappings:
        panel.mappings(mappings)
    with_targets(panel, queries)
    return panel


def base(uid: str, title: str, description: str, time_from: str) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .readonly()
        .timezone("utc")
        .refresh("1m")
        .time(time_from, "now")
        .link(
            DashboardLink("Recsys dashboards")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(["recsys"])
            .as_dropdown(True)
            .keep_time(True)
        )
    )


def service_dashboard() -> Dashboard:
    slo = "job:recsys_latency_slo_errors_per_request"
    return (
        base(
            "recsys-service",
            "Recsys / Service",
            "The recommendation API: traffic, latency and its SLO, errors, caches, snapshots.",
            "now-6h",
        )
        .with_row(Row("Traffic and errors"))
        .with_panel(
            timeseries(
                "Requests by route",
                "Answers per second by route template (every status).",
                "reqps",
                query("job_route:recsys_http_requests:rate5m", "{{route}}"),
            )
        )
        .with_panel(
            timeseries(
                "Answers by strategy",
                "Recommendation answers per second by kind of request (visitor: GET, session: "
                "POST, similar) and strategy; a rise of `popular` is the fallback answering.",
                "reqps",
                query(
                    "sum by (route, strategy)"
                    " (rate(recsys_recommendations_total[$__rate_interval]))",
                    "{{route}} / {{strategy}}",
                ),
            )
        )
        .with_panel(
            timeseries(
                "Latency p99 by route",
                "99th percentile of the time to answer, over 5 minutes (recording rule). The "
                "SLO threshold for GET recommendations is 50 ms.",
                "s",
                query("job_route:recsys_http_request_duration_seconds:p99_rate5m", "{{route}}"),
                thresholds=steps((None, "green"), (0.05, "red")),
            )
        )
        .with_panel(
            timeseries(
                "Server errors (5xx share)",
                "Share of answers with a 5xx status over 5 minutes; the alert pages above 1%.",
                "percentunit",
                query("job:recsys_http_requests_5xx:ratio_rate5m", "5xx"),
                query(
                    "sum by (status) (rate(recsys_http_request_duration_seconds_count"
                    '{status=~"[45].."}[$__rate_interval]))'
                    " / ignoring (status) group_left"
                    " sum(rate(recsys_http_request_duration_seconds_count[$__rate_interval]))",
                    "{{status}}",
                ),
                thresholds=steps((None, "green"), (0.01, "red")),
                minimum=0,
            )
        )
        .with_row(Row("Latency SLO: 99% of GET /v1/recommendations under 50 ms"))
        .with_panel(
            timeseries(
                "Error budget burn rate",
                "Slow answers (over 50 ms) per window divided by the 1% budget: 1 spends the "
                "budget in exactly 30 days. Pages when both 1 h and 5 m exceed 14.4; a ticket "
                "when both 6 h and 30 m exceed 6.",
                "x",
                *(
                    query(f"{slo}:ratio_rate{window} / {SLO_ERROR_BUDGET}", window)
                    for window in ("5m", "30m", "1h", "6h")
                ),
                span=16,
                thresholds=steps((None, "green"), (6, "orange"), (14.4, "red")),
                minimum=0,
            )
        )
        .with_panel(
            stat(
                "Answers within 50 ms (6 h)",
                "Share of GET recommendation answers within the SLO threshold over 6 hours.",
                "percentunit",
                query(f"1 - {slo}:ratio_rate6h"),
                span=8,
                height=8,
                thresholds=steps((None, "red"), (0.99, "green")),
            )
        )
        .with_row(Row("Caches and snapshots"))
        .with_panel(
            timeseries(
                "Cache hit ratio",
                "Answers served from the per-snapshot cache among all answers, by cache; it "
                "starts again from empty after each snapshot swap.",
                "percentunit",
                query("job_cache:recsys_cache_hits:ratio_rate5m", "{{cache}}"),
                minimum=0,
                maximum=1,
            )
        )
        .with_panel(
            timeseries(
                "Snapshot feature age",
                "Time since the served snapshot's feature cutoff, per API instance; the alert "
                "makes a ticket above 10 days.",
                "s",
                query("recsys_snapshot_age_seconds", "{{instance}}"),
                thresholds=steps((None, "green"), (10 * 86400, "red")),
            )
        )
        .with_panel(
            stat(
                "Served snapshot",
                "The snapshot and model each API instance serves.",
                "none",
                query("recsys_snapshot_info", "{{version}} / {{model_version}}"),
                span=8,
                text_mode=common.BigValueTextMode.NAME,
            )
        )
        .with_panel(
            timeseries(
                "Snapshot swaps and failures",
                "Snapshots swapped in, and refused or unloadable by reason (the old one "
                "keeps serving), per hour.",
                "short",
                query("sum(increase(recsys_snapshot_swaps_total[1h]))", "swaps"),
                query(
                    "sum by (reason) (increase(recsys_snapshot_swap_failures_total[1h])) > 0",
                    "failed: {{reason}}",
                ),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Snapshot load time",
                "How long the served snapshot took to download, verify, load and warm.",
                "s",
                query("recsys_snapshot_load_seconds", "{{instance}}"),
                span=8,
            )
        )
        .with_row(Row("Process"))
        .with_panel(
            stat(
                "Targets up",
                "Whether Prometheus reaches the API and the monitoring service (1 up).",
                "none",
                query('up{job=~"recsys-.*"}', "{{job}} {{instance}}"),
                span=6,
                height=8,
                thresholds=steps((None, "red"), (1, "green")),
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .with_panel(
            timeseries(
                "API memory (RSS)",
                "Resident memory of each API process (the snapshot's arrays and the caches).",
                "bytes",
                query('process_resident_memory_bytes{job="recsys-api"}', "{{instance}}"),
                span=6,
            )
        )
        .with_panel(
            timeseries(
                "API CPU",
                "CPU seconds per second of each API process.",
                "percentunit",
                query(
                    'rate(process_cpu_seconds_total{job="recsys-api"}[$__rate_interval])',
                    "{{instance}}",
                ),
                span=6,
            )
        )
        .with_panel(
            timeseries(
                "Experiments file reload failures",
                "Edits of the experiments file that could not be loaded, per hour; the last "
                "good file stays in force.",
                "short",
                query("sum(increase(recsys_experiments_reload_failures_total[1h]))", "failures"),
                span=6,
            )
        )
    )


def model_dashboard() -> Dashboard:
    return (
        base(
            "recsys-model",
            "Recsys / Model",
            "The model on live traffic against its offline evaluation, the retraining "
            "decision and the drift verdicts that feed it.",
            "now-30d",
        )
        .with_row(Row("Live performance"))
        .with_panel(
            timeseries(
                "NDCG@10: live against offline",
                "Live NDCG@10 of each snapshot on its latest day of traffic, and the offline "
                "figure of its evaluation.",
                "none",
                query("recsys_live_ndcg_at_10", "live {{snapshot_version}}"),
                query("recsys_offline_ndcg_at_10", "offline {{snapshot_version}}"),
            )
        )
        .with_panel(
            timeseries(
                "Live / offline NDCG@10",
                "Below 0.8 on at least 100 visitors of the served snapshot: a ticket, and the "
                "retraining policy's `live_ndcg_decay` reason.",
                "percentunit",
                query("recsys_live_ndcg_ratio", "{{snapshot_version}}"),
                thresholds=steps((None, "red"), (0.8, "green")),
                minimum=0,
            )
        )
        .with_panel(
            timeseries(
                "Live recall@20",
                "Recall@20 of each snapshot on its latest day of traffic.",
                "none",
                query("recsys_live_recall_at_20", "{{snapshot_version}}"),
            )
        )
        .with_panel(
            timeseries(
                "Live visitors",
                "Visitors behind each snapshot's latest live figures (under 100: no verdict).",
                "short",
                query("recsys_live_visitors", "{{snapshot_version}}"),
            )
        )
        .with_row(Row("Retraining"))
        .with_panel(
            stat(
                "Last decision",
                "The retraining policy's last decision.",
                "none",
                query("recsys_retrain_decision"),
                mappings=[
                    ValueMap(
                        {
                            "0": ValueMappingResult(text="keep", color="green", index=0),
                            "1": ValueMappingResult(text="retrain", color="orange", index=1),
                        }
                    )
                ],
            )
        )
        .with_panel(
            stat(
                "Its reasons",
                "The reasons of the last decision (drift, live_ndcg_decay, stale_snapshot, "
                "weekly).",
                "none",
                query("recsys_retrain_reason == 1", "{{reason}}"),
                span=10,
                text_mode=common.BigValueTextMode.NAME,
            )
        )
        .with_panel(
            stat(
                "Decided at",
                "When the last decision was made.",
                "dateTimeAsIso",
                query("recsys_retrain_decided_timestamp_seconds * 1000"),
                span=8,
            )
        )
        .with_row(Row("Drift"))
        .with_panel(
            stat(
                "Overall drift",
                "The drift verdict over every feature and mix; `fail` makes a ticket and is "
                "the retraining policy's `drift` reason.",
                "none",
                query("recsys_drift_overall_status"),
                height=8,
                mappings=[STATUS_MAPPING],
                thresholds=steps((None, "green"), (1, "orange"), (2, "red")),
            )
        )
        .with_panel(
            stat(
                "Drift per feature",
                "Each feature's and mix's verdict.",
                "none",
                query("recsys_drift_status", "{{feature}}"),
                span=18,
                height=8,
                mappings=[STATUS_MAPPING],
                thresholds=steps((None, "green"), (1, "orange"), (2, "red")),
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .with_panel(
            timeseries(
                "Kolmogorov-Smirnov per numeric feature",
                "Two-sample KS statistic, current features against the served snapshot's.",
                "none",
                query("recsys_drift_ks", "{{feature}}"),
                span=24,
            )
        )
    )


def data_dashboard() -> Dashboard:
    return (
        base(
            "recsys-data",
            "Recsys / Data",
            "The data behind the model: events and their freshness, drift per feature, the "
            "impression log, and the monitoring export itself.",
            "now-7d",
        )
        .with_row(Row("Events"))
        .with_panel(
            timeseries(
                "Events lag",
                "Time since the newest raw event.",
                "s",
                query("recsys_events_lag_seconds", "events lag"),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Event volume against earlier weeks",
                "Events of the last complete hour divided by the same hour in earlier weeks "
                "(1 = as usual; empty without a baseline).",
                "none",
                query("recsys_event_volume_ratio", "volume ratio"),
                span=8,
                thresholds=steps((None, "red"), (0.5, "green"), (2, "orange")),
            )
        )
        .with_panel(
            timeseries(
                "Events accepted by the API",
                "Events per second durably written to the landing area, and batches that look "
                "like retries without an Idempotency-Key (landed twice).",
                "short",
                query("sum(rate(recsys_events_accepted_total[$__rate_interval]))", "accepted"),
                query(
                    "sum(rate(recsys_events_unkeyed_repeats_total[$__rate_interval]))",
                    "unkeyed repeats",
                ),
                span=8,
            )
        )
        .with_row(Row("Drift"))
        .with_panel(
            timeseries(
                "PSI per feature",
                "Population stability index, current against the served snapshot's "
                "reference, per feature and for the event and category mixes (0.1: moderate, "
                "0.25: large).",
                "none",
                query("recsys_drift_psi", "{{feature}} ({{kind}})"),
                span=24,
                thresholds=steps((None, "green"), (0.1, "orange"), (0.25, "red")),
                minimum=0,
            )
        )
        .with_row(Row("Impression log"))
        .with_panel(
            timeseries(
                "Impressions",
                "Per second: answers kept for the impression log, written to the lake, and "
                "dropped (buffer full); and failed writes of a file.",
                "short",
                query("sum(rate(recsys_impressions_logged_total[$__rate_interval]))", "logged"),
                query("sum(rate(recsys_impressions_written_total[$__rate_interval]))", "written"),
                query("sum(rate(recsys_impressions_dropped_total[$__rate_interval]))", "dropped"),
                query(
                    "sum(rate(recsys_impression_write_failures_total[$__rate_interval]))",
                    "write failures",
                ),
                span=16,
            )
        )
        .with_panel(
            timeseries(
                "Impressions dropped (share)",
                "Dropped among those the API meant to log, over 5 minutes.",
                "percentunit",
                query("job:recsys_impressions_dropped:ratio_rate5m", "dropped"),
                span=8,
                minimum=0,
            )
        )
        .with_row(Row("Monitoring"))
        .with_panel(
            timeseries(
                "Snapshot ages",
                "Since the served snapshot's publication (monitoring) and since its features' "
                "cutoff (API).",
                "s",
                query("recsys_published_snapshot_age_seconds", "since publication"),
                query("max(recsys_snapshot_age_seconds)", "since the feature cutoff"),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Monitoring export age",
                "Time since the served monitoring export was made (hourly); the alert makes a "
                "ticket above 3 hours.",
                "s",
                query("time() - recsys_monitoring_export_timestamp_seconds", "{{instance}}"),
                span=8,
                thresholds=steps((None, "green"), (3 * 3600, "red")),
            )
        )
        .with_panel(
            timeseries(
                "Export loads and failures",
                "Monitoring exports loaded, and refused by reason, per hour.",
                "short",
                query("sum(increase(recsys_monitoring_export_loads_total[1h]))", "loaded"),
                query(
                    "sum by (reason) (increase(recsys_monitoring_export_load_failures_total[1h]))",
                    "failed: {{reason}}",
                ),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Alert notifications received",
                "Notifications from Alertmanager's webhook per hour, by alert and status.",
                "short",
                query(
                    "sum by (alertname, status) "
                    "(increase(recsys_monitoring_alerts_received_total[1h])) > 0",
                    "{{alertname}} {{status}}",
                ),
                span=24,
            )
        )
    )


def business_dashboard() -> Dashboard:
    return (
        base(
            "recsys-business",
            "Recsys / Business",
            "What the recommendations earn, day by day (the last complete day).",
            "now-30d",
        )
        .with_row(Row("The last complete day"))
        .with_panel(
            stat(
                "Click-through rate",
                "Share of recommendation impressions followed by a click.",
                "percentunit",
                query("recsys_business_ctr"),
            )
        )
        .with_panel(
            stat(
                "Conversion rate",
                "Share of visitors who bought.",
                "percentunit",
                query("recsys_business_conversion_rate"),
            )
        )
        .with_panel(
            stat("Revenue", "Revenue of the day.", "short", query("recsys_business_revenue"))
        )
        .with_panel(
            stat(
                "Day",
                "The day these figures are of.",
                "dateTimeAsIsoNoDateIfToday",
                query("recsys_business_day_timestamp_seconds * 1000"),
            )
        )
        .with_row(Row("Over time"))
        .with_panel(
            timeseries(
                "Click-through rate",
                "Each day's CTR and its mean over the seven days before; the alert makes a "
                "ticket under 70% of that mean.",
                "percentunit",
                query("recsys_business_ctr", "CTR"),
                query(
                    "avg_over_time((recsys_business_ctr >= 0)[7d:5m] offset 1d)",
                    "7-day mean before",
                ),
                span=12,
                minimum=0,
            )
        )
        .with_panel(
            timeseries(
                "Conversion rate",
                "Share of visitors who bought, per day.",
                "percentunit",
                query("recsys_business_conversion_rate", "conversion"),
                span=12,
                minimum=0,
            )
        )
        .with_panel(
            timeseries(
                "Revenue",
                "Revenue per day.",
                "short",
                query("recsys_business_revenue", "revenue"),
                span=12,
                minimum=0,
            )
        )
        .with_panel(
            timeseries(
                "Personalized share of answers",
                "Share of recommendation answers that were personalized (not a fallback).",
                "percentunit",
                query(
                    'sum(rate(recsys_recommendations_total{strategy="personalized"}[1h]))'
                    " / sum(rate(recsys_recommendations_total[1h]))",
                    "personalized",
                ),
                span=12,
                minimum=0,
                maximum=1,
            )
        )
    )


BUILDERS = (service_dashboard, model_dashboard, data_dashboard, business_dashboard)


def build() -> dict[str, dict[str, Any]]:
    """Every dashboard as Grafana's JSON model (a dict), by uid, with panel ids numbered."""
    encoder = JSONEncoder(sort_keys=True)
    dashboards: dict[str, dict[str, Any]] = {}
    for make in BUILDERS:
        built = make().build()
        for number, panel in enumerate(built.panels or [], start=1):
            if isinstance(panel, model.Panel | model.RowPanel):
                panel.id_val = number
        as_json = json.loads(encoder.encode(built))
        dashboards[str(as_json["uid"])] = as_json
    return dashboards


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []  # a collapsed row holds its panels


def panel_queries(
    dashboards: dict[str, dict[str, Any]] | None = None,
) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL expression) for every query of every panel, as the
    JSON has them (Grafana's variables such as $__rate_interval included; see
    `GRAFANA_VARIABLES`)."""
    found = []
    for uid, dashboard in (dashboards or build()).items():
        for panel in _panels(dashboard):
            for target in panel.get("targets") or []:
                found.append((uid, str(panel.get("title", "")), str(target["expr"])))
    return found


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, dashboard in build().items():
        path = out_dir / f"{uid}.json"
        path.write_text(json.dumps(dashboard, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.grafana.dashboards",
        description="Write the Grafana dashboards, one JSON file each.",
    )
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help="folder to write into (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
