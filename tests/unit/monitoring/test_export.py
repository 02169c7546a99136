"""The lake's monitoring prefix (monitoring/export.py): exports, LATEST, decisions, alerts; and
that nothing read from the lake is trusted."""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitoring import export
from monitoring.export import ExportError
from monitoring.policy import Observation, Policy, decide
from recsys.lake import Lake

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _id_at(moment: datetime, suffix: str = "0123abcd") -> str:
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"


def test_new_export_id_has_the_format() -> None:
    first, second = export.new_export_id(NOW), export.new_export_id(NOW)
    assert re.fullmatch(r"20261202T120000Z-[0-9a-f]{8}", first)
    assert first != second
    naive = export.new_export_id(datetime(2026, 12, 2, 12, 0))  # naive: taken as UTC
    assert naive.startswith("20261202T120000Z-")


def test_write_then_read_the_latest_export(
    mon_lake: Lake, report: dict[str, Any], tmp_path: Path
) -> None:
    image = tmp_path / "drift.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    export_id = export.write_export(
        mon_lake,
        report,
        {"report.html": b"<html>report</html>", "monitoring_drift.png": image},
        now=NOW,
    )
    assert export.EXPORT_ID.fullmatch(export_id) and export_id.startswith("20261202T120000Z-")
    assert mon_lake.read_text(export.LATEST).strip() == export_id
    assert export.export_files(mon_lake, export_id) == [
        "monitoring.json",
        "monitoring_drift.png",
        "report.html",
    ]
    written = json.loads(mon_lake.read_text(f"monitoring/exports/{export_id}/monitoring.json"))
    assert written["export_id"] == export_id
    assert written["a_key_from_a_newer_writer"] == {"anything": [1, 2, 3]}  # kept for readers
    assert export.read_export_file(mon_lake, export_id, "monitoring_drift.png").startswith(
        b"\x89PNG"
    )

    loaded = export.read_latest(mon_lake)
    assert loaded is not None and loaded.export_id == export_id
    assert loaded.generated_at == NOW  # the report's own generated_at
    model = loaded.report
    assert model.drift is not None and model.drift.features["price"].psi == 0.12
    assert model.live_performance[2].ndcg_at_10 == 0.24
    assert model.retrain is not None and model.retrain.reasons == ["drift", "weekly"]
    dumped = model.model_dump(mode="json", by_alias=True)
    assert dumped["live_performance"][0]["ndcg@10"] == 0.2
    assert "a_key_from_a_newer_writer" not in dumped  # tolerated, not carried along
    assert "n_reference" not in dumped["drift"]["features"]["price"]


def test_generated_at_defaults_to_now_and_else_to_the_id(
    mon_lake: Lake, report: dict[str, Any]
) -> None:
    del report["generated_at"]
    export_id = export.write_export(mon_lake, report, now=NOW)
    loaded = export.read_latest(mon_lake)
    assert loaded is not None and loaded.generated_at == NOW
    # a report without generated_at (another writer): the time in its id
    rel = f"monitoring/exports/{export_id}/monitoring.json"
    document = json.loads(mon_lake.read_text(rel))
    del document["generated_at"]
    mon_lake.write_text(rel, json.dumps(document))
    loaded = export.read_latest(mon_lake)
    assert loaded is not None and loaded.generated_at == NOW.replace(microsecond=0)


def test_a_report_of_nothing_measured_is_valid(mon_lake: Lake) -> None:
    """No snapshot, no reference, no impressions yet: every section null or empty."""
    report = {
        "reference": {"feature_version": None, "snapshot_version": None},
        "current": {"feature_version": "fv"},
        "drift": {"status": None, "features": {}, "event_mix": None, "categories": None},
        "live_performance": [],
        "offline": {},
        "freshness": {"events_lag_seconds": None, "snapshot_age_seconds": None},
        "volume": None,
        "business": None,
        "retrain": {"decision": True, "reasons": ["stale_snapshot"], "decided_at": NOW},
    }
    export.write_export(mon_lake, report, now=NOW)
    loaded = export.read_latest(mon_lake)
    assert loaded is not None and loaded.report.business is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r["drift"]["features"]["price"].update(psi=math.nan), "features.price.psi"),
        (lambda r: r["drift"].update(status="bad"), "drift.status"),
        (lambda r: r["drift"]["features"]["price"].update(kind="text"), "kind"),
        (lambda r: r["live_performance"][0].update(n_visitors="many"), "n_visitors"),
        (lambda r: r["live_performance"][0].update(n_visitors=True), "n_visitors"),
        (lambda r: r["business"].update(ctr="0.5"), "business.ctr"),
        (lambda r: r["retrain"].update(decision="yes"), "retrain.decision"),
        (lambda r: r["retrain"].update(reasons=["x"] * 100), "retrain.reasons"),
    ],
    ids=["nan", "status", "kind", "count-text", "count-bool", "number-text", "bool", "too-many"],
)
def test_write_export_refuses_what_the_service_would_refuse(
    mon_lake: Lake, report: dict[str, Any], change: Any, field: str
) -> None:
    change(report)
    with pytest.raises(ValueError, match=re.escape(field)):
        export.write_export(mon_lake, report, now=NOW)
    assert not mon_lake.exists(export.LATEST)
    assert mon_lake.glob("monitoring/exports/*") == []  # nothing written


@pytest.mark.parametrize(
    "name", ["../x.png", "X.png", "a/b.png", "report.svg", ".png", "monitoring.json", "a b.png"]
)
def test_write_export_refuses_file_names(mon_lake: Lake, report: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError):
        export.write_export(mon_lake, report, {name: b"x"}, now=NOW)
    assert not mon_lake.exists(export.LATEST)


def test_no_export_yet(mon_lake: Lake) -> None:
    assert export.read_latest(mon_lake) is None
    mon_lake.write_text(export.LATEST, "\n")  # an empty LATEST: nothing either
    assert export.read_latest(mon_lake) is None


@pytest.mark.parametrize(
    "latest",
    [
        "../../etc",
        "20261202T120000Z-0123abcd/../../x",
        "20261202T120000Z-0123ABCD",
        "20261202T120000Z-0123abcd0",
        "x" * 1000,
    ],
)
def test_a_latest_that_names_no_export_id_is_refused(mon_lake: Lake, latest: str) -> None:
    mon_lake.write_text(export.LATEST, latest)
    with pytest.raises(ExportError) as caught:
        export.read_latest(mon_lake)
    assert caught.value.reason == "latest"


def test_a_latest_that_is_not_text_is_refused(mon_lake: Lake, tmp_path: Path) -> None:
    local = tmp_path / "latest"
    local.write_bytes(b"\xff\xfe20261202")
    mon_lake.put(local, export.LATEST)
    with pytest.raises(ExportError) as caught:
        export.read_latest(mon_lake)
    assert caught.value.reason == "latest"


def _written(mon_lake: Lake, report: dict[str, Any]) -> tuple[str, str]:
    export_id = export.write_export(mon_lake, report, now=NOW)
    return export_id, f"monitoring/exports/{export_id}/monitoring.json"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "invalid"),
        ("[]", "invalid"),
        ('{"drift": {"status": "fine"}}', "invalid"),
        ('{"freshness": {"events_lag_seconds": Infinity}}', "invalid"),
        ('{"live_performance": [{"ndcg@10": 1.5}]}', "invalid"),
        ('{"export_id": "20261202T120000Z-ffffffff"}', "invalid"),  # another export's report
    ],
)
def test_a_malformed_report_is_refused(
    mon_lake: Lake, report: dict[str, Any], content: str, reason: str
) -> None:
    export_id, rel = _written(mon_lake, report)
    mon_lake.write_text(rel, content)
    with pytest.raises(ExportError) as caught:
        export.load_export(mon_lake, export_id)
    assert caught.value.reason == reason


def test_a_missing_or_oversized_report_is_refused(
    mon_lake: Lake, report: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rel = _written(mon_lake, report)
    monkeypatch.setattr(export, "MAX_REPORT_BYTES", 100)
    with pytest.raises(ExportError) as caught:
        export.read_latest(mon_lake)
    assert caught.value.reason == "too_large"
    mon_lake.remove(rel)
    with pytest.raises(ExportError) as caught:
        export.read_latest(mon_lake)
    assert caught.value.reason == "missing"


def test_export_files_are_read_by_validated_names_only(
    mon_lake: Lake, report: dict[str, Any]
) -> None:
    export_id = export.write_export(mon_lake, report, {"report.html": b"<p>x</p>"}, now=NOW)
    assert export.read_export_file(mon_lake, export_id, "report.html") == b"<p>x</p>"
    for name in ("../monitoring.json", "..", "REPORT.html", "report.html/..", ""):
        with pytest.raises(ValueError):
            export.read_export_file(mon_lake, export_id, name)
    with pytest.raises(ExportError):
        export.read_export_file(mon_lake, "../exports", "report.html")
    with pytest.raises(FileNotFoundError):
        export.read_export_file(mon_lake, export_id, "absent.png")
    with pytest.raises(ValueError, match="larger"):
        export.read_export_file(mon_lake, export_id, "report.html", max_bytes=3)


def test_prune_keeps_the_newest_and_the_latest(mon_lake: Lake, report: dict[str, Any]) -> None:
    ids = [
        export.write_export(mon_lake, report, now=NOW + timedelta(hours=i), keep=None)
        for i in range(5)
    ]
    mon_lake.write_text("monitoring/exports/not-an-export/keep.txt", "mine")
    mon_lake.write_text(export.LATEST, ids[0])  # LATEST moved back to the oldest
    removed = export.prune_exports(mon_lake, keep=2)
    assert removed == ids[1:3]
    left = {p.rsplit("/", 1)[-1] for p in mon_lake.glob("monitoring/exports/*")}
    assert left == {ids[0], ids[3], ids[4], "not-an-export"}
    with pytest.raises(ValueError):
        export.prune_exports(mon_lake, keep=0)


def test_write_export_prunes_old_exports(mon_lake: Lake, report: dict[str, Any]) -> None:
    for i in range(4):
        last = export.write_export(mon_lake, report, now=NOW + timedelta(hours=i), keep=2)
    left = sorted(p.rsplit("/", 1)[-1] for p in mon_lake.glob("monitoring/exports/*"))
    assert len(left) == 2 and left[-1] == last


def _decision(now: datetime, **changes: Any) -> dict[str, Any]:
    """A real record, as monitoring.policy makes it."""
    observation = Observation(now=now, drift_status="fail", drift_failing=("price",), **changes)
    return decide(observation, Policy()).record()


def test_decisions_are_recorded_and_read_newest_first(
    mon_lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    paths = [
        export.record_decision(mon_lake, _decision(NOW + timedelta(hours=i))) for i in range(3)
    ]
    assert paths[0] == "monitoring/decisions/20261202T120000Z.json"
    # junk beside them: skipped (malformed, with a warning) or ignored (not a decision's name)
    mon_lake.write_text("monitoring/decisions/20261202T150000Z.json", '{"decision": "maybe"}')
    mon_lake.write_text("monitoring/decisions/20261202T160000Z.json", "not json")
    mon_lake.write_text("monitoring/decisions/notes.json", "{}")
    with caplog.at_level(logging.WARNING, logger="monitoring.export"):
        found = export.read_decisions(mon_lake)
    assert [d["decided_at"] for d in found] == [
        "2026-12-02T14:00:00Z",
        "2026-12-02T13:00:00Z",
        "2026-12-02T12:00:00Z",
    ]
    assert found[0]["decision"] is True and found[0]["reasons"] == ["drift", "stale_snapshot"]
    assert found[0]["policy"]["ndcg_drop"] == 0.2
    assert sum("skipping decision" in r.message for r in caplog.records) == 2
    assert [d["decided_at"] for d in export.read_decisions(mon_lake, limit=1)] == [
        "2026-12-02T14:00:00Z"
    ]
    assert export.read_decisions(mon_lake, limit=0) == []


def test_a_decision_without_time_is_dated_now_and_a_bad_one_refused(mon_lake: Lake) -> None:
    rel = export.record_decision(mon_lake, {"decision": False, "reasons": []})
    assert re.fullmatch(r"monitoring/decisions/[0-9]{8}T[0-9]{6}Z\.json", rel)
    with pytest.raises(ValueError, match="decision"):
        export.record_decision(mon_lake, {"decision": "no", "decided_at": NOW})
    with pytest.raises(ValueError):
        export.record_decision(mon_lake, {"decision": False, "score": math.inf})


def test_alerts_are_recorded_by_day(mon_lake: Lake) -> None:
    received = datetime(2026, 12, 2, 12, 0, 1, 250000, tzinfo=UTC)
    rel = export.record_alert(mon_lake, {"version": "4", "status": "firing"}, received)
    assert re.fullmatch(
        r"monitoring/alerts/2026-12-02/20261202T120001250000Z-[0-9a-f]{8}\.json", rel
    )
    written = json.loads(mon_lake.read_text(rel))
    assert written == {
        "version": "4",
        "status": "firing",
        "receivedAt": "2026-12-02T12:00:01.250000+00:00",
    }
