"""Prometheus, Alertmanager and Grafana as code, checked by the real tools.

- Prometheus' config, rules and rule unit tests through promtool 2.42; Alertmanager's config
  through amtool 0.25, and a real Alertmanager delivering to a webhook with the bearer token,
  resolving, and inhibiting as the config says (the binaries come from `make tools`; without
  them these tests fail with that hint, they are not optional);
- the dashboards generate, every panel query is PromQL by Prometheus' own parser (as recording
  rules under `promtool check rules`), and every metric a query, a rule or an alert's template
  names is one the code exports: the API's from a real registry of `api.metrics.Metrics`, the
  monitoring service's from `monitoring.metrics_catalog`, or a recording rule. A misspelt
  name fails, which one test shows on purpose.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import metrics_catalog
from monitoring.grafana import dashboards
from recsys.settings import REPO_ROOT
from tests.alertmanager import (
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    RULE_FILES,
    AlertmanagerServer,
    WebhookRecorder,
    copy_rules,
    render_alertmanager_config,
    render_prometheus_config,
)
from tests.prometheus import AMTOOL, PROMTOOL, require

PROMETHEUS_DIR = PROMETHEUS_CONFIG.parent
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GRAFANA = REPO_ROOT / "monitoring" / "grafana"
SEVERITIES = {"page", "ticket"}
# series Prometheus makes itself, for every target or every alert
PROMETHEUS_MADE = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}


def run(binary: Path, *args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(require(binary)), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert done.returncode == 0, f"{binary.name} {args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of the project's rule files that is a `record` or an `alert`."""
    return [
        rule
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


# --- metric names in PromQL -----------------------------------------------------------------

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# label lists: `by (job, le)`, `on (snapshot_version)`, `group_left (x)`
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
OFFSET = re.compile(r"\boffset\s+-?\w+")
# an identifier that does not continue a number (1e3), a name or a float (0.5e2)
IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
KEYWORDS = {
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "atan2", "inf", "nan",
}  # fmt: skip


def promql(expr: str) -> str:
    """A panel's query as plain PromQL: Grafana's variables replaced by what they stand for."""
    for variable, value in dashboards.GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not a function or
    aggregation (followed by `(`), a keyword, a label name (in `{}` or a label list), a string
    or a duration."""
    expr = STRING.sub('""', promql(expr))
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers (their strings already gone)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = LABEL_LIST.sub(" ", expr)
    expr = OFFSET.sub(" ", expr)
    names = set()
    for match in IDENTIFIER.finditer(expr):
        word = match.group()
        if word.lower() in KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def api_metric_names() -> set[str]:
    """Every series name the API exposes, from a real registry of `api.metrics.Metrics` (the
    families' names and types: a histogram's children appear only once observed)."""
    from api.metrics import Metrics

    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("", "_count", "_sum"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def known_metric_names() -> set[str]:
    recorded = {rule["record"] for rule in rules("record")}
    return api_metric_names() | metrics_catalog.exposed_names() | recorded | PROMETHEUS_MADE


def unknown_metrics(exprs: list[tuple[str, str]]) -> dict[str, set[str]]:
    """(where, expression) -> {where: names not exported by anything}."""
    known = known_metric_names()
    return {where: names for where, expr in exprs if (names := metric_names(expr) - known)}


def template_queries(annotations: dict[str, str]) -> list[str]:
    """The PromQL of `query "..."` calls in an alert's annotation templates."""
    return [
        match.encode().decode("unicode_escape")
        for text in annotations.values()
        for match in re.findall(r'query\s+"((?:[^"\\]|\\.)*)"', text)
    ]


def rule_expressions() -> list[tuple[str, str]]:
    found = [(rule["record"], rule["expr"]) for rule in rules("record")]
    for rule in rules("alert"):
        found.append((rule["alert"], rule["expr"]))
        for expr in template_queries(rule.get("annotations", {})):
            found.append((f"{rule['alert']} (annotation)", expr))
    return found


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job="recsys-api"} == 0 or absent(up{job=~"a|b"})', {"up"}),
        (
            'histogram_quantile(0.99, sum by (job, le) (rate(x_bucket{le="0.05"}[5m])))',
            {"x_bucket"},
        ),
        ("sum(rate(a_total[$__rate_interval])) / ignoring (status) group_left b", {"a_total", "b"}),
        ('a < 0.8 and on (v) label_replace(b, "v", "$1", "version", "(.+)")', {"a", "b"}),
        ("time() - a_seconds > 26 * 3600 or a_seconds != a_seconds", {"a_seconds"}),
        ("c < 0.7 * avg_over_time(c[7d] offset 1d) + 1e3 - 0x1F", {"c"}),
        ("max_over_time(a:b:c[1h:5m]) > bool 1", {"a:b:c"}),
        ("sum without (instance) (a) unless b", {"a", "b"}),
    ],
)
def test_metric_names_are_extracted_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_name_check_catches_a_misspelt_metric() -> None:
    good = "sum(rate(recsys_http_request_duration_seconds_count[5m]))"
    bad = "sum(rate(recsys_http_request_duration_secnds_count[5m])) / recsys_drift_psi"
    assert unknown_metrics([("good", good), ("bad", bad)]) == {
        "bad": {"recsys_http_request_duration_secnds_count"}
    }
    assert unknown_metrics([("catalog typo", "recsys_live_ndcg_at10")]) == {
        "catalog typo": {"recsys_live_ndcg_at10"}
    }


def test_the_known_names_come_from_the_code() -> None:
    api = api_metric_names()
    # histograms, counters, gauges, the info and the process collector, as exposed
    assert {
        "recsys_http_request_duration_seconds_bucket",
        "recsys_http_request_duration_seconds_count",
        "recsys_recommendations_total",
        "recsys_snapshot_age_seconds",
        "recsys_snapshot_info",
        "process_resident_memory_bytes",
    } <= api
    assert "recsys_recommendations" not in api  # a counter is selected by its `_total`
    assert "recsys_live_ndcg_ratio" in metrics_catalog.exposed_names()


# --- Prometheus -------------------------------------------------------------------------------


def test_promtool_accepts_the_config_and_its_rules(tmp_path: Path) -> None:
    # a copy of the folder: the config's rule paths are relative to it, and must not reach out
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy, ignore=shutil.ignore_patterns("tests"))
    out = run(PROMTOOL, "check", "config", copy / "prometheus.yml")
    assert f"{len(RULE_FILES)} rule files found" in out
    config = load(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["recsys-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["recsys-monitoring"]["static_configs"][0]["targets"] == ["monitoring:8001"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]


def test_promtool_checks_the_rules() -> None:
    run(PROMTOOL, "check", "rules", *RULE_FILES)


def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    out = run(PROMTOOL, "test", "rules", *RULE_TESTS)
    assert "FAILED" not in out


def test_every_alert_is_labelled_annotated_and_tested_both_ways() -> None:
    tested: dict[str, set[bool]] = {}
    for path in RULE_TESTS:
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    alerts = rules("alert")
    assert len(alerts) >= 12
    for rule in alerts:
        name = rule["alert"]
        assert re.fullmatch(r"Recsys[A-Z][A-Za-z0-9]+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert tested.get(name) == {True, False}, f"{name}: firing and silent cases needed"


def test_recording_rules_are_named_level_metric_operations() -> None:
    for rule in rules("record"):
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_rules_and_alert_templates_name_only_exported_metrics() -> None:
    exprs = rule_expressions()
    assert any("annotation" in where for where, _ in exprs)  # the drift alert's query
    assert unknown_metrics(exprs) == {}


def test_the_project_prometheus_config_renders_for_a_test(tmp_path: Path) -> None:
    copies = copy_rules(tmp_path / "rules", for_="0s")
    assert all(
        rule["for"] == "0s"
        for path in copies
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    )
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(
        render_prometheus_config(
            copies, {"recsys-monitoring": ["127.0.0.1:1"]}, "http://127.0.0.1:2"
        )
    )
    run(PROMTOOL, "check", "config", config_path)
    config = load(config_path)
    assert [job["job_name"] for job in config["scrape_configs"]] == ["recsys-monitoring"]
    with pytest.raises(ValueError, match="no such scrape job"):
        render_prometheus_config(copies, {"recsys": ["127.0.0.1:1"]})


# --- Alertmanager -----------------------------------------------------------------------------


def test_amtool_accepts_the_config() -> None:
    run(AMTOOL, "check-config", ALERTMANAGER_CONFIG)
    config = load(ALERTMANAGER_CONFIG)
    assert config["route"]["receiver"] == "recsys-monitoring"
    assert config["route"]["group_by"] == ["alertname"]
    (receiver,) = config["receivers"]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["url"] == "http://monitoring:8001/v1/alerts"
    assert webhook["send_resolved"] is True
    assert webhook["http_config"]["authorization"]["type"] == "Bearer"


def test_amtool_routes_pages_and_tickets_to_the_monitoring_service() -> None:
    for labels in (["severity=page", "alertname=RecsysApiDown"], ["severity=ticket"]):
        out = run(
            AMTOOL,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            "--verify.receivers=recsys-monitoring",
            *labels,
        )
        assert "recsys-monitoring" in out


def test_the_rendered_alertmanager_config_is_valid(tmp_path: Path) -> None:
    rendered = tmp_path / "alertmanager.yml"
    rendered.write_text(render_alertmanager_config("http://127.0.0.1:9/v1/alerts", "2s"))
    run(AMTOOL, "check-config", rendered)
    config = load(rendered)
    assert config["route"]["group_wait"] == "2s"
    assert all("group_wait" not in route for route in config["route"]["routes"])
    assert "http_config" not in config["receivers"][0]["webhook_configs"][0]
    assert config["inhibit_rules"] == load(ALERTMANAGER_CONFIG)["inhibit_rules"]


def _alert(
    name: str, severity: str, ends_at: datetime | None = None, **labels: str
) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": name},
    }
    if ends_at is not None:
        alert["endsAt"] = ends_at.isoformat()
    return alert


def test_alertmanager_delivers_with_the_token_resolves_and_inhibits(tmp_path: Path) -> None:
    token = tmp_path / "webhook-token"
    token.write_text("s3cret-token\n")
    with (
        WebhookRecorder() as hook,
        AlertmanagerServer(tmp_path, hook.url, token_file=token) as am,
    ):
        am.post_alerts(
            [
                _alert("RecsysApiDown", "page", job="recsys-api", instance="api:8000"),
                _alert("RecsysHttp5xxRatioHigh", "page", job="recsys-api"),
                _alert("RecsysLatencySLOFastBurn", "page", job="recsys-api", slo="latency"),
                _alert("RecsysLatencySLOSlowBurn", "ticket", job="recsys-api", slo="latency"),
                _alert("RecsysDriftFailing", "ticket", job="recsys-monitoring"),
            ]
        )
        firing = hook.wait_for(lambda n: n["groupLabels"] == {"alertname": "RecsysDriftFailing"})
        assert firing["status"] == "firing"
        assert firing["receiver"] == "recsys-monitoring"
        assert hook.authorizations[0] == "Bearer s3cret-token"

        inhibited = {a["labels"]["alertname"] for a in am.alerts() if a["status"]["inhibitedBy"]}
        # the API down hides the other alerts of its job; the SLO's page hides its ticket
        assert inhibited == {
            "RecsysHttp5xxRatioHigh",
            "RecsysLatencySLOFastBurn",
            "RecsysLatencySLOSlowBurn",
        }

        past = datetime.now(UTC) - timedelta(seconds=1)
        am.post_alerts([_alert("RecsysDriftFailing", "ticket", past, job="recsys-monitoring")])
        resolved = hook.wait_for(
            lambda n: (
                n["status"] == "resolved"
                and n["groupLabels"] == {"alertname": "RecsysDriftFailing"}
            )
        )
        assert resolved["alerts"][0]["labels"]["job"] == "recsys-monitoring"


# --- Grafana ----------------------------------------------------------------------------------


def test_the_dashboards_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dashboards.main(["--out", str(tmp_path)]) == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == [
        "recsys-business.json",
        "recsys-data.json",
        "recsys-model.json",
        "recsys-service.json",
    ]
    assert capsys.readouterr().out.count("wrote ") == 4
    for uid, dashboard in dashboards.build().items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), uid
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == dashboards.DATASOURCE.uid, panel["title"]
                assert panel["targets"] and all(t["refId"] for t in panel["targets"])


def test_every_panel_query_is_promql(tmp_path: Path) -> None:
    queries = dashboards.panel_queries()
    templates = [expr for where, expr in rule_expressions() if "annotation" in where]
    exprs = [promql(expr) for _, _, expr in queries] + templates
    checked = tmp_path / "panel_queries.yml"
    checked.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "panel-queries",
                        "rules": [
                            {"record": f"dashboard:query:{i}", "expr": expr}
                            for i, expr in enumerate(exprs)
                        ],
                    }
                ]
            }
        )
    )
    out = run(PROMTOOL, "check", "rules", checked)
    assert f"SUCCESS: {len(exprs)} rules found" in out


def test_every_panel_query_names_only_exported_metrics() -> None:
    queries = dashboards.panel_queries()
    assert len(queries) > 40
    assert unknown_metrics([(f"{uid} / {title}", expr) for uid, title, expr in queries]) == {}


def test_every_monitoring_metric_is_on_a_dashboard() -> None:
    shown = set().union(*(metric_names(expr) for _, _, expr in dashboards.panel_queries()))
    assert metrics_catalog.exposed_names() - shown == set()


def test_grafana_provisioning_matches_the_dashboards() -> None:
    sources = load(GRAFANA / "provisioning" / "datasources" / "datasources.yml")["datasources"]
    prometheus = next(s for s in sources if s["type"] == "prometheus")
    assert prometheus["uid"] == dashboards.DATASOURCE.uid
    assert prometheus["url"] == "http://prometheus:9090"
    (provider,) = load(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    # the built JSON is never committed
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(dashboards.OUT_DIR / "recsys-service.json")],
        cwd=REPO_ROOT,
    )
    assert ignored.returncode == 0, "monitoring/grafana/dashboards/ is not git-ignored"


# --- the catalog ------------------------------------------------------------------------------


def test_the_catalog_is_well_formed_and_needs_only_the_standard_library() -> None:
    names = [spec.name for spec in metrics_catalog.METRICS]
    assert len(names) == len(set(names))
    for spec in metrics_catalog.METRICS:
        assert re.fullmatch(r"recsys_[a-z0-9_]+", spec.name), spec.name
        assert spec.type in ("gauge", "counter"), spec.name
        assert spec.name.endswith("_total") == (spec.type == "counter"), spec.name
        assert spec.help.strip(), spec.name
        assert all(re.fullmatch(r"[a-z_]+", label) for label in spec.labels), spec.name
    # -S -s -E: no site-packages, no user site, no PYTHONPATH: the standard library alone
    done = subprocess.run(
        [
            sys.executable,
            "-S",
            "-s",
            "-E",
            "-c",
            "import monitoring.metrics_catalog as c; c.METRICS",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
