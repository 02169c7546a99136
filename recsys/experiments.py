"""Experiments: which policy answers a request (A/B tests and interleaving), from a YAML file.

The file (path from `RECSYS_EXPERIMENTS_FILE`; unset = no experiments, at no cost):

    version: 1
    experiments:
      - name: ranker_vs_popularity      # ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$, unique
        status: running                 # running (default) | stopped
        routes: [visitor, session]      # which routes it splits (default both)
        salt: spring-2025               # optional (default: the name), 1..256 printable chars
        variants:                       # 2..10, unique names; the first is the control
          - {name: control, weight: 50, policy: ranker}
          - {name: popular, weight: 50, policy: popularity}
          - {name: mixed, weight: 0, policy: {interleave: [ranker, als]}}

A policy is `ranker`, `als`, `popularity`, or `{interleave: [a, b]}` with two different ones of
those three. Weights are relative (non-negative numbers of at most 1,000,000, at least one of
an experiment's positive); a variant of weight 0 gets nobody, which is how a variant is paused
without moving anyone else. Every mapping refuses keys it does not know, and a key written
twice, so that a typo (`wieght`) is an error rather than a default silently taken. The
`similar` route is never split.

Assignment (`assign`). A request goes to the first *running* experiment whose `routes` cover its
route; stopped experiments split no one (their visitors get whatever the route does without an
experiment, and may fall to a later experiment on the same route). A request without a visitor
id gets the control's policy and no experiment or variant: it cannot be told apart from other
anonymous requests later, so recording it under a variant would only blur the comparison.
Otherwise the visitor's number is

    u = first 8 bytes of blake2b(f"{salt}:{visitor_id}"), big-endian, >> 11, / 2**53

a stable, uniform number in [0, 1) (the 53 high bits of the 64-bit hash, so that it never
rounds up to 1.0 in a float; never Python's `hash()`, which changes between processes). The
variant is the one whose slice of the cumulative weights (divided by their total) holds `u`.
So a visitor keeps their variant for as long as the experiment's salt and weights stay; raising
one variant's weight moves only the visitors in the slices that moved; another experiment's
edits move no one (each experiment hashes with its own salt); a new salt (or name) reshuffles
everyone. Slices are precomputed when the file is loaded: an assignment costs one hash and one
bisection, about a microsecond.

Reloading (`ExperimentsFile`). `current()` reads the clock and, at most once per
`check_seconds`, stats the file; it re-reads the file only when its (mtime_ns, size, inode)
changed (a Kubernetes ConfigMap update swaps a symlink, which changes the inode). A reload that
fails (not YAML, invalid, larger than 1 MB, unreadable, or the file removed) logs one bounded
warning, counts it (`failures`, and the `on_failure(reason)` callback, for a Prometheus
counter), and keeps the last good experiments: a failed step leaves the last good state, as a
refused snapshot does. That holds for a removed file too (an editor or a ConfigMap swap can
remove it for a moment); an empty file is refused for the same reason (a half-written one looks
empty). To end every experiment, write `experiments: []` (or set `status: stopped`), which is a
valid file. The same failing file is not re-read or re-counted until it changes. Only the first
load raises (`ExperimentsError`): a bad file at start-up is a deployment mistake to stop on.

Interleaving (`team_draft`): team-draft interleaving (F. Radlinski, M. Kurup, T. Joachims, "How
does clickthrough data reflect retrieval quality?", CIKM 2008). Two teams, one per ranking,
pick in turns: the team with fewer picks picks next, a tie is broken by a coin flip; a team
picks its highest-ranked item not yet in the list. When one ranking runs out the other goes on;
the list stops at `k` items or when both are exhausted. Each item records the team that picked
it, so that clicks credit a team: over many impressions, the policy whose team gets more clicks
wins. The coins come from a deterministic hash of the seed (`interleaving_seed`: experiment,
visitor, snapshot), so the same visitor sees the same list from the same snapshot, and answers
stay cacheable.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
)

log = logging.getLogger("recsys.experiments")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME = re.compile(NAME_PATTERN)  # experiment and variant names: safe in JSON and logs as is
MAX_FILE_BYTES = 1_048_576
MAX_EXPERIMENTS = 100
MIN_VARIANTS, MAX_VARIANTS = 2, 10
MAX_SALT_CHARS = 256
MAX_WEIGHT = 1_000_000.0
MAX_ERRORS_SHOWN = 5  # errors named in one message; the rest are counted

PLAIN_POLICIES = ("ranker", "als", "popularity")
PlainPolicy = Literal["ranker", "als", "popularity"]
PolicyKind = Literal["ranker", "als", "popularity", "interleave"]
Route = Literal["visitor", "session"]
ROUTES: tuple[Route, ...] = ("visitor", "session")


class ExperimentsError(ValueError):
    """The experiments file cannot be used; the message names the file, experiment and field.

    `reason` is the label of the failure counter: missing | unreadable | invalid.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


def _shown(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters with unprintable ones escaped: fit for a log line."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut + ("..." if len(text) > limit else "")


# ---------------------------------------------------------------------------------------------
# Policies and assignments: the values requests use


@dataclass(frozen=True, slots=True)
class Policy:
    """How a list is made: one of the plain policies, or two of them interleaved.

    `label` is what impressions record: `ranker`, `als`, `popularity` or
    `interleave:<a>,<b>` (a, b in the order of the file: `a` is team A of `team_draft`).
    """

    kind: PolicyKind
    sides: tuple[PlainPolicy, PlainPolicy] | None = None
    label: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "interleave":
            if (
                self.sides is None
                or len(self.sides) != 2
                or any(side not in PLAIN_POLICIES for side in self.sides)
                or self.sides[0] == self.sides[1]
            ):
                raise ValueError(
                    "an interleaving policy needs two different policies of "
                    + ", ".join(PLAIN_POLICIES)
                )
            label = f"interleave:{self.sides[0]},{self.sides[1]}"
        elif self.kind in PLAIN_POLICIES and self.sides is None:
            label = self.kind
        else:
            raise ValueError(f"a policy is one of {', '.join(PLAIN_POLICIES)} or interleave")
        object.__setattr__(self, "label", label)

    @property
    def is_interleave(self) -> bool:
        return self.kind == "interleave"


def _policy(value: Any) -> Policy:
    """A policy as the file writes it: a plain name, or `{interleave: [a, b]}`."""
    if isinstance(value, Policy):
        return value
    if isinstance(value, str) and value in PLAIN_POLICIES:
        return Policy(cast(PlainPolicy, value))
    if isinstance(value, dict) and list(value) == ["interleave"]:
        sides = value["interleave"]
        if (
            isinstance(sides, list)
            and len(sides) == 2
            and all(isinstance(s, str) and s in PLAIN_POLICIES for s in sides)
        ):
            if sides[0] == sides[1]:
                raise ValueError("interleave needs two different policies, not one twice")
            return Policy("interleave", (sides[0], sides[1]))
        raise ValueError(
            f"interleave takes a list of two different policies of {', '.join(PLAIN_POLICIES)}"
        )
    raise ValueError(
        f"a policy is one of {', '.join(PLAIN_POLICIES)}, or {{interleave: [a, b]}} with two "
        "different ones of those"
    )


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a request gets: the policy, and the experiment and variant to record (None for a
    request without a visitor id, which gets the control's policy unrecorded)."""

    policy: Policy
    experiment: str | None
    variant: str | None


# ---------------------------------------------------------------------------------------------
# The file's schema (pydantic), then its compiled form (`Experiments`)

Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Spec(BaseModel):
    # strict: YAML's own conversions (`yes` -> True, `1.0` -> 1.0) are refused, not bent again
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class VariantSpec(_Spec):
    name: Name
    weight: float = Field(ge=0, le=MAX_WEIGHT, allow_inf_nan=False)
    policy: Annotated[Policy, PlainValidator(_policy)]


class ExperimentSpec(_Spec):
    name: Name
    status: Literal["running", "stopped"] = "running"
    routes: list[Route] = Field(default_factory=lambda: list(ROUTES), min_length=1)
    salt: str | None = Field(default=None, min_length=1, max_length=MAX_SALT_CHARS)
    variants: list[VariantSpec] = Field(min_length=MIN_VARIANTS, max_length=MAX_VARIANTS)

    @field_validator("routes")
    @classmethod
    def _routes_once(cls, routes: list[Route]) -> list[Route]:
        if len(set(routes)) != len(routes):
            raise ValueError("a route is listed twice")
        return routes

    @field_validator("salt")
    @classmethod
    def _printable_salt(cls, salt: str | None) -> str | None:
        if salt is not None and not salt.isprintable():
            raise ValueError("the salt must be printable characters")
        return salt

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in variants]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"variant names must be unique: {', '.join(twice)} twice")
        if not any(v.weight > 0 for v in variants):
            raise ValueError("at least one variant needs a positive weight")
        return variants


class ExperimentsSpec(_Spec):
    version: int
    experiments: list[ExperimentSpec] = Field(max_length=MAX_EXPERIMENTS)

    @field_validator("version")
    @classmethod
    def _version(cls, version: int) -> int:
        if version != 1:
            raise ValueError("the only version is 1")
        return version

    @field_validator("experiments")
    @classmethod
    def _unique(cls, experiments: list[ExperimentSpec]) -> list[ExperimentSpec]:
        names = [e.name for e in experiments]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"experiment names must be unique: {', '.join(twice)} twice")
        return experiments


def bucket(salt: str, visitor_id: int) -> float:
    """The visitor's stable uniform number in [0, 1) for `salt` (see the module doc)."""
    digest = hashlib.blake2b(f"{salt}:{visitor_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) * 2.0**-53


@dataclass(frozen=True, eq=False)
class Experiment:
    """One experiment, compiled: its variants' slices of [0, 1) and the answers, made once."""

    name: str
    status: Literal["running", "stopped"]
    routes: frozenset[str]
    salt: str
    variant_names: tuple[str, ...]
    weights: tuple[float, ...]
    policies: tuple[Policy, ...]
    # bounds[i]: where variant i's slice ends; from the last positive weight on, exactly 1.0,
    # so that rounding never lets u in [0, 1) fall past it (or onto a weight-0 variant)
    bounds: tuple[float, ...] = field(init=False, repr=False)
    assignments: tuple[Assignment, ...] = field(init=False, repr=False)
    anonymous: Assignment = field(init=False, repr=False)

    def __post_init__(self) -> None:
        total = sum(self.weights)
        last = max(i for i, w in enumerate(self.weights) if w > 0)
        running, bounds = 0.0, []
        for i, weight in enumerate(self.weights):
            running += weight
            bounds.append(1.0 if i >= last else min(running / total, 1.0))
        object.__setattr__(self, "bounds", tuple(bounds))
        object.__setattr__(
            self,
            "assignments",
            tuple(
                Assignment(policy, self.name, variant)
                for variant, policy in zip(self.variant_names, self.policies, strict=True)
            ),
        )
        object.__setattr__(self, "anonymous", Assignment(self.policies[0], None, None))

    @classmethod
    def from_spec(cls, spec: ExperimentSpec) -> Experiment:
        return cls(
            name=spec.name,
            status=spec.status,
            routes=frozenset(spec.routes),
            salt=spec.name if spec.salt is None else spec.salt,
            variant_names=tuple(v.name for v in spec.variants),
            weights=tuple(v.weight for v in spec.variants),
            policies=tuple(v.policy for v in spec.variants),
        )

    @property
    def control(self) -> Policy:
        return self.policies[0]

    def assign(self, visitor_id: int) -> Assignment:
        """The visitor's variant (bisect_right: a `u` on a bound belongs to the next slice,
        and skips weight-0 slices, whose bound equals the one before)."""
        return self.assignments[bisect.bisect_right(self.bounds, bucket(self.salt, visitor_id))]


class Experiments:
    """A parsed file: the experiments in file order, and the one each route goes to."""

    __slots__ = ("by_route", "experiments")

    def __init__(self, experiments: Sequence[Experiment] = ()) -> None:
        self.experiments: tuple[Experiment, ...] = tuple(experiments)
        self.by_route: dict[str, Experiment] = {}
        for route in ROUTES:
            first = next(
                (e for e in self.experiments if e.status == "running" and route in e.routes),
                None,
            )
            if first is not None:
                self.by_route[route] = first

    @classmethod
    def from_spec(cls, spec: ExperimentsSpec) -> Experiments:
        return cls([Experiment.from_spec(e) for e in spec.experiments])

    def __len__(self) -> int:
        return len(self.experiments)

    def __iter__(self) -> Iterator[Experiment]:
        return iter(self.experiments)

    def __repr__(self) -> str:
        return f"Experiments({[e.name for e in self.experiments]})"


NO_EXPERIMENTS = Experiments()


def assign(experiments: Experiments, route: str, visitor_id: int | None) -> Assignment | None:
    """The assignment of a request on `route` (`visitor` | `session`; anything else, such as
    `similar`, is never split): None when no running experiment covers the route; the control's
    policy without names when `visitor_id` is None; else the visitor's variant."""
    experiment = experiments.by_route.get(route)
    if experiment is None:
        return None
    if visitor_id is None:
        return experiment.anonymous
    return experiment.assign(visitor_id)


# ---------------------------------------------------------------------------------------------
# Reading the file


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping key written twice (PyYAML keeps the last)."""


def _mapping_once(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    # the mapping's own keys only: a key that overrides one merged in (`<<: *base`) is fine
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=False)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {_shown(str(key))!r} is written twice", key_node.start_mark
            )
        if isinstance(key, Hashable):
            seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_once)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the snippet PyYAML quotes from the file."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"not valid YAML{where}: {_shown(str(exc.problem or exc.context), 200)}"
    return "not valid YAML"


def _experiment_label(data: Any, index: int) -> str:
    """`experiments[i] ('name')`, naming the experiment when the file gives it a valid name."""
    name = None
    if isinstance(data, dict) and isinstance(data.get("experiments"), list):
        entries = data["experiments"]
        if index < len(entries) and isinstance(entries[index], dict):
            raw = entries[index].get("name")
            if isinstance(raw, str) and len(raw) <= 64:
                name = _shown(raw)
    return f"experiments[{index}]" + (f" ({name!r})" if name else "")


def _describe(errors: Sequence[Any], data: Any) -> str:
    """Validation errors as `where: what`, bounded; never the refused input itself."""
    parts = []
    for error in errors[:MAX_ERRORS_SHOWN]:
        loc = list(error.get("loc", ()))
        where = []
        if len(loc) >= 2 and loc[0] == "experiments" and isinstance(loc[1], int):
            where.append(_experiment_label(data, loc[1]))
            loc = loc[2:]
        field_path = ""
        for part in loc:
            if isinstance(part, int):
                field_path += f"[{part}]"
            else:
                field_path += ("." if field_path else "") + _shown(str(part))
        if field_path:
            where.append(field_path)
        msg = str(error.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{': '.join(where) or 'the file'}: {_shown(msg, 200)}")
    more = len(errors) - MAX_ERRORS_SHOWN
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def loads(text: str | bytes, source: str = "<text>") -> Experiments:
    """Experiments from the file's content; ExperimentsError names `source`, the experiment and
    the field of what is wrong."""
    where = _shown(source, 200)
    if len(text) > MAX_FILE_BYTES:
        raise ExperimentsError(f"experiments file {where}: larger than {MAX_FILE_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExperimentsError(
                f"experiments file {where}: not UTF-8 (byte {exc.start})"
            ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        raise ExperimentsError(f"experiments file {where}: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ExperimentsError(f"experiments file {where}: nested too deep") from None
    if data is None:
        raise ExperimentsError(
            f"experiments file {where}: empty (to end every experiment, write "
            "`version: 1` and `experiments: []`)"
        )
    if not isinstance(data, dict):
        raise ExperimentsError(
            f"experiments file {where}: must be a mapping with `version` and `experiments`"
        )
    try:
        spec = ExperimentsSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise ExperimentsError(f"experiments file {where}: {_describe(errors, data)}") from None
    return Experiments.from_spec(spec)


_Key = tuple[int, int, int]  # (mtime_ns, size, inode): what says the file changed


def _key(stat: os.stat_result) -> _Key:
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _read(path: Path) -> tuple[_Key, bytes]:
    """The file's bytes (at most the limit and one more) and the key of what was read."""
    try:
        with path.open("rb") as handle:
            key = _key(os.fstat(handle.fileno()))
            if key[1] > MAX_FILE_BYTES:
                raise ExperimentsError(
                    f"experiments file {_shown(str(path), 200)}: larger than {MAX_FILE_BYTES} bytes"
                )
            return key, handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ExperimentsError(
            f"experiments file {_shown(str(path), 200)}: not found", reason="missing"
        ) from None
    except OSError as exc:
        raise ExperimentsError(
            f"experiments file {_shown(str(path), 200)}: cannot be read "
            f"({_shown(exc.strerror or type(exc).__name__, 100)})",
            reason="unreadable",
        ) from None


def load(path: str | os.PathLike[str]) -> Experiments:
    """Experiments from the file at `path` (at most 1 MB); ExperimentsError says what is wrong."""
    path = Path(path)
    return loads(_read(path)[1], str(path))


class ExperimentsFile:
    """The experiments of a file, reloaded when it changes (see the module doc).

    `current()` is the hot path: a monotonic clock read, and at most once per `check_seconds`
    a stat. Only one thread checks at a time; the others meanwhile go on with the value they
    find (a non-blocking lock), so no request ever waits for a reload. The value is replaced by
    one reference assignment, atomic under the GIL: a request that read it keeps a consistent
    object.

    `failures` counts reloads that failed (`on_failure(reason)` is called for each, reason
    missing | unreadable | invalid); `reads` counts the times the file was read; `last_error`
    is the message of the latest failure, None once a reload succeeds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        check_seconds: float = 1.0,
        on_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Loads the file now: ExperimentsError if it is missing or invalid (at start-up there
        is no last good state to keep). `path` None: no experiments, never a stat."""
        if not check_seconds >= 0:
            raise ValueError("check_seconds must be a non-negative number")
        self.path = None if path is None else Path(path)
        self.check_seconds = float(check_seconds)
        self.on_failure = on_failure
        self.failures = 0
        self.reads = 0
        self.last_error: str | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._value = NO_EXPERIMENTS
        self._seen: _Key | None = None  # the key last read (good or not); None: none or gone
        self._next_check = float("inf")
        if self.path is not None:
            key, content = _read(self.path)
            self.reads += 1
            self._value = loads(content, str(self.path))
            self._seen = key
            self._next_check = clock() + self.check_seconds

    def current(self) -> Experiments:
        """The experiments to use now (checked for changes at most once per check_seconds)."""
        if self._clock() < self._next_check:  # always true without a path (inf)
            return self._value
        if not self._lock.acquire(blocking=False):
            return self._value  # another thread is checking: go on with what it replaces
        try:
            now = self._clock()
            if now >= self._next_check:
                self._check()
                self._next_check = self._clock() + self.check_seconds
        finally:
            self._lock.release()
        return self._value

    def _check(self) -> None:
        assert self.path is not None
        try:
            key: _Key | None = _key(self.path.stat())
        except FileNotFoundError:
            key = None
        except OSError:
            key = (-1, -1, -1)  # unreadable: let the read say why (once)
        if key == self._seen:
            return
        try:
            if key is None:
                raise ExperimentsError(
                    f"experiments file {_shown(str(self.path), 200)}: removed", reason="missing"
                )
            self.reads += 1
            key, content = _read(self.path)
            value = loads(content, str(self.path))
        except ExperimentsError as exc:
            self._seen = key
            self._failed(exc)
            return
        self._seen = key
        self._value = value
        self.last_error = None
        log.info(
            "experiments file %s loaded: %d experiment(s), visitor route: %s, session route: %s",
            _shown(str(self.path), 200),
            len(value),
            _route_name(value, "visitor"),
            _route_name(value, "session"),
        )

    def _failed(self, exc: ExperimentsError) -> None:
        self.failures += 1
        self.last_error = str(exc)
        log.warning(
            "%s; keeping the last good experiments (%d)", _shown(str(exc), 2_000), len(self._value)
        )
        if self.on_failure is not None:
            try:
                self.on_failure(exc.reason)
            except Exception:  # a broken counter must not break the requests that check
                log.exception("the experiments failure callback failed")


def _route_name(experiments: Experiments, route: str) -> str:
    experiment = experiments.by_route.get(route)
    return "none" if experiment is None else experiment.name


# ---------------------------------------------------------------------------------------------
# Team-draft interleaving


def interleaving_seed(experiment: str, visitor_id: int | None, snapshot_version: str) -> int:
    """The seed of a visitor's coins: the same list for the same visitor and snapshot."""
    text = f"{experiment}:{visitor_id}:{snapshot_version}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _coins(seed: int) -> Iterator[bool]:
    """Fair, deterministic coin flips: the bits of blake2b(seed, block), 64 per block."""
    block = 0
    while True:
        digest = hashlib.blake2b(f"{seed}:{block}".encode(), digest_size=8).digest()
        bits = int.from_bytes(digest, "big")
        for shift in range(64):
            yield bool((bits >> shift) & 1)
        block += 1


def _ints(items: Sequence[int] | Any) -> list[int]:
    """Plain ints from a list or a numpy array (whose `tolist` makes Python ints at once)."""
    tolist = getattr(items, "tolist", None)
    return [int(i) for i in (tolist() if callable(tolist) else items)]


def team_draft(
    a_items: Sequence[int] | Any,
    b_items: Sequence[int] | Any,
    k: int,
    rng_seed: int,
    a_name: str,
    b_name: str,
) -> tuple[list[int], list[str]]:
    """Team-draft interleaving of rankings A and B (best first), at most `k` items.

    Returns the items in order and, for each, the team that picked it (`a_name` or `b_name`).
    The team with fewer picks picks next; on a tie a coin (from `rng_seed`) decides; a team
    picks its highest-ranked item not yet in the list, and goes on alone once the other has
    nothing left. So the list has min(k, |A u B|) unique items, and while both teams have items
    their sizes differ by at most one at every prefix.
    """
    if k < 0:
        raise ValueError("k must be non-negative")
    if a_name == b_name:
        raise ValueError("the two teams need different names")
    a, b = _ints(a_items), _ints(b_items)
    items: list[int] = []
    teams: list[str] = []
    taken: set[int] = set()
    i = j = picks_a = picks_b = 0
    coins = _coins(rng_seed)
    while len(items) < k:
        while i < len(a) and a[i] in taken:
            i += 1
        while j < len(b) and b[j] in taken:
            j += 1
        has_a, has_b = i < len(a), j < len(b)
        if not (has_a or has_b):
            break
        if has_a and (not has_b or picks_a < picks_b or (picks_a == picks_b and next(coins))):
            item, team = a[i], a_name
            picks_a += 1
        else:
            item, team = b[j], b_name
            picks_b += 1
        items.append(item)
        teams.append(team)
        taken.add(item)
    return items, teams


def declared_vars(experiments: Experiments) -> dict[str, dict[str, Any]]:
    """What the warehouse cannot learn from the impressions, as dbt vars: each experiment's
    control (its first variant) and declared weights (the sample-ratio check's expected
    shares). `recsys build` passes them when `RECSYS_EXPERIMENTS_FILE` is set, so that the
    analysis uses the file the service splits traffic by."""
    return {
        "experiment_controls": {e.name: e.variant_names[0] for e in experiments},
        "experiment_weights": {
            e.name: dict(zip(e.variant_names, e.weights, strict=True)) for e in experiments
        },
    }
