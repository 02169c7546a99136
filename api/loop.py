"""The closed loop's part of a request: which policy answers it (experiments) and what it
showed (the impression log).

`choose` looks the visitor up in the experiments file (`recsys.experiments`; nothing to do without
one); `answer` runs the chosen policy (`api.recommend`); `log` records the impression
(`api.impressions`). The routes call the three in that order, so that every recommendation
answer, cached or not, is one impression with the experiment and variant that made it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Request

from api import recommend
from api.impressions import ImpressionLog, now_ms
from api.snapshot import Snapshot
from recsys import experiments


@dataclass(frozen=True)
class Choice:
    """The policy a request gets, and the experiment and variant that chose it (None: the
    request is in no experiment)."""

    policy: str  # ranker | als | popularity | interleave:<a>,<b> (as impressions record it)
    experiment: str | None = None
    variant: str | None = None
    sides: tuple[str, str] | None = None  # interleaving: the two policies

    @functools.cached_property
    def json(self) -> bytes:
        """`"experiment":..,"variant":..` for the answer."""
        return b'"experiment":%s,"variant":%s' % (
            _json_name(self.experiment),
            _json_name(self.variant),
        )


def _json_name(name: str | None) -> bytes:
    # names are checked against experiments.NAME when the file is loaded: nothing to escape
    return b"null" if name is None else b'"' + name.encode() + b'"'


CONTROL = Choice("ranker")


def choose(request: Request, route: str, visitor_id: int | None) -> Choice:
    """The policy for this request: the control (`ranker`) unless a running experiment of the
    experiments file covers `route` and the visitor."""
    source: experiments.ExperimentsFile | None = request.app.state.experiments
    if source is None:
        return CONTROL
    assignment = experiments.assign(source.current(), route, visitor_id)
    if assignment is None:
        return CONTROL
    return _choice(assignment)


@functools.lru_cache(maxsize=1024)
def _choice(assignment: experiments.Assignment) -> Choice:
    policy = assignment.policy
    return Choice(
        policy=policy.label,
        experiment=assignment.experiment,
        variant=assignment.variant,
        sides=policy.sides,
    )


def answer(
    snapshot: Snapshot,
    choice: Choice,
    route: str,
    visitor_id: int | None,
    session_item_ids: Sequence[int],
    k: int,
    category_id: int | None,
    exclude: Sequence[int],
) -> recommend.Answer:
    """The chosen policy's answer. Interleaving draws its coin flips from the experiment, the
    visitor and the snapshot: the same request gets the same list (cacheable), and different
    visitors get independent draws."""
    if choice.sides is None:
        return recommend.for_policy(
            snapshot, choice.policy, route, visitor_id, session_item_ids, k, category_id, exclude
        )
    seed = experiments.interleaving_seed(choice.experiment or "", visitor_id, snapshot.version)
    a_name, b_name = choice.sides

    def draft(a: list[int], b: list[int], size: int) -> tuple[list[int], list[str]]:
        return experiments.team_draft(a, b, size, seed, a_name, b_name)

    return recommend.interleaved(
        snapshot,
        choice.sides,
        draft,
        route,
        visitor_id,
        session_item_ids,
        k,
        category_id,
        exclude,
    )


def log(
    request: Request,
    impression_id: str,
    snapshot: Snapshot,
    choice: Choice,
    route: str,
    visitor_id: int | None,
    strategy: str,
    items: str,
    anchor_item_id: int | None = None,
) -> None:
    """Keep the impression for the lake (never blocks: see api.impressions); `items` as
    `api.impressions.items_json` renders them."""
    impressions: ImpressionLog = request.app.state.impressions
    impressions.record(
        (
            now_ms(),
            impression_id,
            visitor_id,
            route,
            strategy,
            choice.policy,
            choice.experiment,
            choice.variant,
            snapshot.version,
            snapshot.model_version,
            anchor_item_id,
            items,
        )
    )
