"""The training DAG's quality gate as a branch: publish, or stop with the reasons in the log."""

from __future__ import annotations

from recsys.settings import Settings
from recsys_airflow.common import SETTINGS, say

PUBLISH = "publish"
GATE_REFUSED = "gate_refused"


def branch(force: bool, settings: Settings = SETTINGS) -> str:
    """The task to follow: `PUBLISH` if `models_ml.publish.gate` passes the last evaluation
    against the published snapshot (or `force`), else `GATE_REFUSED`."""
    from models_ml import pipeline

    reasons = pipeline.gate_reasons(settings)
    if not reasons:
        say("quality gate passed")
        return PUBLISH
    if force:
        say(f"quality gate refuses ({'; '.join(reasons)}), but force is set: publishing")
        return PUBLISH
    say(f"quality gate refused the snapshot: {'; '.join(reasons)}")
    return GATE_REFUSED


def refused(settings: Settings = SETTINGS) -> list[str]:
    """Say why nothing is published; the reasons."""
    from models_ml import pipeline

    reasons = pipeline.gate_reasons(settings)
    say(
        "nothing published: the quality gate refused the snapshot: "
        f"{'; '.join(reasons)} (trigger with force=true to publish anyway)"
    )
    return reasons
