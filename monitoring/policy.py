"""The retraining policy: whether to train a new model now, from what monitoring measured.

One function, `decide`, over one `Observation`; no I/O, so that every rule is a row of a table
in the tests (tests/unit/monitoring/test_policy.py). The reasons, each with its code:

- `drift`: the drift models' overall status is `fail` (the failing features are named);
- `live_ndcg_decay`: the served snapshot's live NDCG@10, on its latest day with at least
  `min_live_visitors` visitors, is more than `ndcg_drop` below the offline figure of its
  manifest (too few visitors: no verdict, the noise of a handful of visitors is not decay);
- `stale_snapshot`: the served snapshot was published more than `max_snapshot_age` ago, or no
  snapshot is published at all;
- `weekly`: the last training (the last decision to retrain, else the served snapshot's
  publication) is at least `every` old: the seed documents' weekly cadence, whatever else says.

Cool-down: never a decision to retrain within `cooldown` of the last one. The reasons found
then are recorded as `held`, not dropped, so that the record says what was seen and why
nothing was done. Every decision is recorded by the caller (`monitoring.run`), with its reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

REASONS = ("drift", "live_ndcg_decay", "stale_snapshot", "weekly")


@dataclass(frozen=True)
class Policy:
    ndcg_drop: float = 0.2
    min_live_visitors: int = 100
    max_snapshot_age: timedelta = timedelta(days=14)
    every: timedelta = timedelta(days=7)
    cooldown: timedelta = timedelta(hours=24)

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        """From the `RECSYS_RETRAIN_*` settings (recsys.settings.Settings)."""
        return cls(
            ndcg_drop=settings.recsys_retrain_ndcg_drop,
            min_live_visitors=settings.recsys_retrain_min_live_visitors,
            max_snapshot_age=timedelta(days=settings.recsys_retrain_max_snapshot_age_days),
            every=timedelta(days=settings.recsys_retrain_every_days),
            cooldown=timedelta(hours=settings.recsys_retrain_cooldown_hours),
        )

    def describe(self) -> dict[str, float | int]:
        return {
            "ndcg_drop": self.ndcg_drop,
            "min_live_visitors": self.min_live_visitors,
            "max_snapshot_age_days": self.max_snapshot_age / timedelta(days=1),
            "every_days": self.every / timedelta(days=1),
            "cooldown_hours": self.cooldown / timedelta(hours=1),
        }


@dataclass(frozen=True)
class Observation:
    """What monitoring measured, as of `now` (timezone-aware datetimes throughout)."""

    now: datetime
    drift_status: str | None = None  # ok | warn | fail; None: no reference to compare with
    drift_failing: tuple[str, ...] = ()
    snapshot_version: str | None = None  # the served snapshot; None: none published
    snapshot_published_at: datetime | None = None
    offline_ndcg: float | None = None  # the served snapshot's manifest: als_catboost ndcg@10
    live_ndcg: float | None = None  # its latest day with enough visitors
    live_visitors: int = 0
    live_day: int | None = None
    last_retrain_at: datetime | None = None  # the last decision that said retrain


@dataclass(frozen=True)
class Reason:
    code: str
    detail: str


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reasons: tuple[Reason, ...]
    decided_at: datetime
    held: tuple[Reason, ...] = ()  # found, but inside the cool-down
    cooldown_until: datetime | None = None
    policy: dict[str, float | int] = field(default_factory=dict)

    @property
    def codes(self) -> list[str]:
        return [r.code for r in self.reasons]

    def record(self) -> dict[str, Any]:
        """The decision as recorded (lake `monitoring/decisions/`, monitoring.json `retrain`)."""
        return {
            "decision": self.retrain,
            "reasons": self.codes,
            "details": [r.detail for r in self.reasons],
            "held": [r.code for r in self.held],
            "held_details": [r.detail for r in self.held],
            "cooldown_until": self.cooldown_until.isoformat() if self.cooldown_until else None,
            "decided_at": self.decided_at.isoformat(),
            "policy": self.policy,
        }

    def summary(self) -> str:
        if self.retrain:
            return "retrain: " + "; ".join(r.detail for r in self.reasons)
        if self.held:
            until = self.cooldown_until.isoformat() if self.cooldown_until else "?"
            return f"no retrain: cool-down until {until} holds back " + "; ".join(
                r.detail for r in self.held
            )
        return "no retrain: no drift, no decay, the snapshot is recent"


def _days(delta: timedelta) -> str:
    return f"{delta / timedelta(days=1):.1f} days"


def reasons(obs: Observation, policy: Policy) -> list[Reason]:
    """Every reason to retrain that `obs` shows, before the cool-down."""
    found: list[Reason] = []
    if obs.drift_status == "fail":
        names = ", ".join(obs.drift_failing) or "see the drift models"
        found.append(Reason("drift", f"drift fails ({names})"))
    if (
        obs.live_ndcg is not None
        and obs.offline_ndcg is not None
        and obs.offline_ndcg > 0
        and obs.live_visitors >= policy.min_live_visitors
        and obs.live_ndcg < (1 - policy.ndcg_drop) * obs.offline_ndcg
    ):
        found.append(
            Reason(
                "live_ndcg_decay",
                f"live NDCG@10 {obs.live_ndcg:.4f} (day {obs.live_day}, {obs.live_visitors} "
                f"visitors) is more than {policy.ndcg_drop:.0%} below the offline "
                f"{obs.offline_ndcg:.4f}",
            )
        )
    if obs.snapshot_published_at is None:
        found.append(Reason("stale_snapshot", "no snapshot is published"))
    else:
        age = obs.now - obs.snapshot_published_at
        if age > policy.max_snapshot_age:
            found.append(
                Reason(
                    "stale_snapshot",
                    f"the served snapshot {obs.snapshot_version} is {_days(age)} old "
                    f"(limit {_days(policy.max_snapshot_age)})",
                )
            )
    trained = max(
        (t for t in (obs.last_retrain_at, obs.snapshot_published_at) if t is not None),
        default=None,
    )
    if trained is not None and obs.now - trained >= policy.every:
        found.append(
            Reason(
                "weekly",
                f"the last training was {_days(obs.now - trained)} ago "
                f"(every {_days(policy.every)})",
            )
        )
    return found


def decide(obs: Observation, policy: Policy) -> Decision:
    """The decision for `obs` under `policy`: see the module's doc."""
    found = tuple(reasons(obs, policy))
    described = policy.describe()
    if found and obs.last_retrain_at is not None:
        until = obs.last_retrain_at + policy.cooldown
        if obs.now < until:
            return Decision(False, (), obs.now, held=found, cooldown_until=until, policy=described)
    return Decision(bool(found), found, obs.now, policy=described)
