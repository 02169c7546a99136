"""The experiments file (recsys.experiments): reloads, assignment, team-draft interleaving."""

from __future__ import annotations

import math
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from recsys import experiments as ex
from recsys.experiments import (
    Assignment,
    Experiments,
    ExperimentsError,
    ExperimentsFile,
    Policy,
    assign,
    team_draft,
)

EXAMPLE = """
version: 1
experiments:
  - name: ranker_vs_popularity      # unique
    status: running
    routes: [visitor, session]
    salt: spring
    variants:                       # the first one is the control
      - {name: control, weight: 50, policy: ranker}
      - {name: popular, weight: 50, policy: popularity}
      - {name: mixed, weight: 0, policy: {interleave: [ranker, als]}}
"""


def experiment(name: str = "exp", **fields: Any) -> dict[str, Any]:
    """One experiment as the file writes it (two 50/50 variants unless `fields` says)."""
    return {
        "name": name,
        "variants": [
            {"name": "control", "weight": 50, "policy": "ranker"},
            {"name": "treatment", "weight": 50, "policy": "popularity"},
        ],
        **fields,
    }


def text_of(*experiments: dict[str, Any], version: Any = 1) -> str:
    return yaml.safe_dump({"version": version, "experiments": list(experiments)})


def write(path: Path, text: str) -> None:
    """Replace the file as a deployment does (new inode: a rename), so the change is seen even
    when size and mtime happen to match."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- parsing ------------------------------------------------------------------------------


def test_the_example_parses() -> None:
    parsed = ex.loads(EXAMPLE, "experiments.yaml")
    (only,) = parsed.experiments
    assert only.name == "ranker_vs_popularity"
    assert only.status == "running"
    assert only.routes == {"visitor", "session"}
    assert only.salt == "spring"
    assert only.variant_names == ("control", "popular", "mixed")
    assert only.weights == (50.0, 50.0, 0.0)
    assert [p.label for p in only.policies] == [
        "ranker",
        "popularity",
        "interleave:ranker,als",
    ]
    assert only.policies[2] == Policy("interleave", ("ranker", "als"))
    assert only.control == Policy("ranker")
    assert parsed.by_route == {"visitor": only, "session": only}


def test_defaults() -> None:
    (only,) = ex.loads(text_of(experiment("plain"))).experiments
    assert only.status == "running"
    assert only.routes == {"visitor", "session"}
    assert only.salt == "plain"  # the name


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text(EXAMPLE)
    assert [e.name for e in ex.load(path)] == ["ranker_vs_popularity"]


def test_policy_labels_and_checks() -> None:
    assert Policy("als").label == "als"
    assert Policy("interleave", ("als", "popularity")).label == "interleave:als,popularity"
    assert Policy("interleave", ("ranker", "als")).is_interleave
    assert not Policy("ranker").is_interleave
    for kind, sides in [
        ("interleave", None),
        ("interleave", ("ranker", "ranker")),
        ("interleave", ("ranker", "similar")),
        ("ranker", ("ranker", "als")),
        ("similar", None),
    ]:
        with pytest.raises(ValueError):
            Policy(kind, sides)  # type: ignore[arg-type]


def _variants(*variants: dict[str, Any]) -> dict[str, Any]:
    return experiment("exp", variants=list(variants))


V_OK = {"name": "control", "weight": 1, "policy": "ranker"}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"version": 2, "experiments": []}, ["version: ", "version is 1"]),
        ({"version": True, "experiments": []}, ["version: "]),
        ({"version": 1}, ["experiments: Field required"]),
        ({"version": 1, "experiments": [], "extra": 1}, ["extra: Extra inputs"]),
        (
            {"version": 1, "experiments": [experiment("a"), experiment("a")]},
            ["experiments: experiment names must be unique: a twice"],
        ),
        (
            {"version": 1, "experiments": [experiment("-starts-with-dash")]},
            ["experiments[0] ('-starts-with-dash'): name: String should match pattern"],
        ),
        (
            {"version": 1, "experiments": [experiment("x" * 65)]},
            ["experiments[0]: name: String should match pattern"],
        ),
        ({"version": 1, "experiments": [experiment(status="paused")]}, ["exp'): status: "]),
        ({"version": 1, "experiments": [experiment(routes=["similar"])]}, ["routes[0]: "]),
        ({"version": 1, "experiments": [experiment(routes=[])]}, ["): routes: "]),
        (
            {"version": 1, "experiments": [experiment(routes=["visitor", "visitor"])]},
            ["routes: a route is listed twice"],
        ),
        ({"version": 1, "experiments": [experiment(salt="")]}, ["salt: "]),
        ({"version": 1, "experiments": [experiment(salt="s" * 257)]}, ["salt: "]),
        ({"version": 1, "experiments": [experiment(salt="a\nb")]}, ["salt: the salt must be"]),
        ({"version": 1, "experiments": [experiment(salt=7)]}, ["salt: Input should be a valid"]),
        ({"version": 1, "experiments": [experiment(wieght=1)]}, ["exp'): wieght: Extra"]),
        ({"version": 1, "experiments": [_variants(V_OK)]}, ["variants: List should have at"]),
        (
            {
                "version": 1,
                "experiments": [_variants(*[{**V_OK, "name": f"v{i}"} for i in range(11)])],
            },
            ["variants: List should have at most 10"],
        ),
        (
            {"version": 1, "experiments": [_variants(V_OK, V_OK)]},
            ["variants: variant names must be unique: control twice"],
        ),
        (
            {
                "version": 1,
                "experiments": [
                    _variants({**V_OK, "weight": 0}, {**V_OK, "name": "b", "weight": 0})
                ],
            },
            ["variants: at least one variant needs a positive weight"],
        ),
        (
            {"version": 1, "experiments": [_variants(V_OK, {**V_OK, "name": "b", "weight": -1})]},
            ["exp'): variants[1].weight: Input should be greater than or equal to 0"],
        ),
        (
            {"version": 1, "experiments": [_variants(V_OK, {**V_OK, "name": "b", "weight": "1"})]},
            ["variants[1].weight: Input should be a valid number"],
        ),
        (
            {"version": 1, "experiments": [_variants(V_OK, {**V_OK, "name": "b", "weight": True})]},
            ["variants[1].weight: "],
        ),
        (
            {"version": 1, "experiments": [_variants(V_OK, {**V_OK, "name": "b", "weight": 1e9})]},
            ["variants[1].weight: Input should be less than or equal to"],
        ),
        (
            {"version": 1, "experiments": [_variants(V_OK, {**V_OK, "name": "b c"})]},
            ["variants[1].name: String should match pattern"],
        ),
        (
            {
                "version": 1,
                "experiments": [_variants(V_OK, {**V_OK, "name": "b", "policy": "similar"})],
            },
            ["variants[1].policy: a policy is one of ranker, als, popularity"],
        ),
        (
            {
                "version": 1,
                "experiments": [
                    _variants(V_OK, {**V_OK, "name": "b", "policy": {"interleave": ["als", "als"]}})
                ],
            },
            ["variants[1].policy: interleave needs two different policies"],
        ),
        (
            {
                "version": 1,
                "experiments": [
                    _variants(V_OK, {**V_OK, "name": "b", "policy": {"interleave": ["als"]}})
                ],
            },
            ["variants[1].policy: interleave takes a list of two"],
        ),
        (
            {
                "version": 1,
                "experiments": [
                    _variants(
                        V_OK,
                        {**V_OK, "name": "b", "policy": {"interleave": ["als", "ranker"], "x": 1}},
                    )
                ],
            },
            ["variants[1].policy: a policy is one of"],
        ),
        (
            {"version": 1, "experiments": [_variants(V_OK, {**V_OK, "name": "b", "colour": 1})]},
            ["variants[1].colour: Extra inputs are not permitted"],
        ),
    ],
)
def test_an_invalid_file_names_the_file_experiment_and_field(
    document: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(ExperimentsError) as raised:
        ex.loads(yaml.safe_dump(document), "conf/experiments.yaml")
    message = str(raised.value)
    assert message.startswith("experiments file conf/experiments.yaml: "), message
    for part in expected:
        assert part in message, message
    assert raised.value.reason == "invalid"


def test_the_second_experiment_is_named_by_index_and_name() -> None:
    bad = experiment("second", status="maybe")
    with pytest.raises(ExperimentsError, match=r"experiments\[1\] \('second'\): status: "):
        ex.loads(text_of(experiment("first"), bad))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty (to end every experiment, write"),
        ("# only a comment\n", "empty"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("version: 1\nexperiments: [\n", "not valid YAML at line 3"),
        ("version: 1\nversion: 1\nexperiments: []\n", "the key 'version' is written twice"),
        ("version: 1\nexperiments: !!python/object:os.system {}\n", "not valid YAML"),
    ],
)
def test_files_that_are_not_an_experiments_mapping(text: str, expected: str) -> None:
    with pytest.raises(ExperimentsError, match=r"^experiments file x\.yaml: ") as raised:
        ex.loads(text, "x.yaml")
    assert expected in str(raised.value)


def test_a_key_overriding_a_merged_one_is_not_a_duplicate() -> None:
    text = """
version: 1
experiments:
  - name: merged
    variants:
      - &base {name: control, weight: 1, policy: ranker}
      - {<<: *base, name: other, policy: als}
"""
    (only,) = ex.loads(text).experiments
    assert only.variant_names == ("control", "other")
    assert [p.label for p in only.policies] == ["ranker", "als"]


def test_errors_never_echo_large_input() -> None:
    huge = "x" * 100_000
    document = {
        "version": 1,
        "experiments": [experiment(huge, salt=huge), {"name": "b", huge: huge}],
    }
    with pytest.raises(ExperimentsError) as raised:
        ex.loads(yaml.safe_dump(document, width=10**9))
    assert len(str(raised.value)) < 2_000
    # many errors: the first few, and a count of the rest
    many = {"version": 1, "experiments": [{"name": f"e{i}"} for i in range(20)]}
    with pytest.raises(ExperimentsError, match=r"\(and 15 more\)$"):
        ex.loads(yaml.safe_dump(many))


def test_a_file_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(EXAMPLE + "#" * ex.MAX_FILE_BYTES)
    with pytest.raises(ExperimentsError, match="larger than"):
        ex.load(path)
    with pytest.raises(ExperimentsError, match="larger than"):
        ex.loads(EXAMPLE + "#" * ex.MAX_FILE_BYTES)


def test_bytes_must_be_utf8() -> None:
    with pytest.raises(ExperimentsError, match="not UTF-8"):
        ex.loads(b"version: 1\nexperiments: []\n# \xff\n")
    assert len(ex.loads(EXAMPLE.encode())) == 1


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ExperimentsError, match="not found") as raised:
        ex.load(tmp_path / "absent.yaml")
    assert raised.value.reason == "missing"


# --- reloading ----------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def watched(path: Path, clock: FakeClock, **kwargs: Any) -> tuple[ExperimentsFile, list[str]]:
    reasons: list[str] = []
    return ExperimentsFile(
        path, check_seconds=1.0, on_failure=reasons.append, clock=clock, **kwargs
    ), reasons


def test_a_change_is_seen_after_check_seconds(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "experiments.yaml"
    write(path, text_of(experiment("first")))
    file, _ = watched(path, clock)
    assert [e.name for e in file.current()] == ["first"]
    write(path, text_of(experiment("second")))
    clock.now += 0.5
    assert [e.name for e in file.current()] == ["first"]  # not checked yet
    clock.now += 0.6
    assert [e.name for e in file.current()] == ["second"]
    assert file.failures == 0
    assert file.last_error is None


def test_an_in_place_edit_is_seen(tmp_path: Path, clock: FakeClock) -> None:
    """An editor writing the same inode: mtime or size changes."""
    path = tmp_path / "experiments.yaml"
    path.write_text(text_of(experiment("first")))
    file, _ = watched(path, clock)
    path.write_text(text_of(experiment("second-one")))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    clock.now += 1
    assert [e.name for e in file.current()] == ["second-one"]


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "experiments.yaml"
    write(path, EXAMPLE)
    file, _ = watched(path, clock)
    assert file.reads == 1
    first = file.current()
    for _ in range(50):
        clock.now += 1.5
        assert file.current() is first  # the very same object: nothing was parsed
    assert file.reads == 1


def test_an_invalid_edit_keeps_the_last_good_and_counts_once(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "experiments.yaml"
    write(path, text_of(experiment("good")))
    file, reasons = watched(path, clock)
    good = file.current()
    write(path, text_of(experiment("bad", status="paused")))
    for _ in range(5):  # checked five times, failed (and read) once
        clock.now += 1
        assert file.current() is good
    assert file.failures == 1
    assert reasons == ["invalid"]
    assert file.reads == 2
    assert file.last_error is not None and "experiments[0] ('bad'): status" in file.last_error
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "keeping the last good experiments (1)" in warnings[0].getMessage()
    # not YAML at all: counted again, still the last good
    write(path, "version: [\n")
    clock.now += 1
    assert file.current() is good
    assert reasons == ["invalid", "invalid"]
    # fixed: the new value, and no error
    write(path, text_of(experiment("fixed")))
    clock.now += 1
    assert [e.name for e in file.current()] == ["fixed"]
    assert file.last_error is None
    assert file.failures == 2


def test_a_removed_file_keeps_the_last_good(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "experiments.yaml"
    write(path, text_of(experiment("kept")))
    file, reasons = watched(path, clock)
    kept = file.current()
    path.unlink()
    for _ in range(3):
        clock.now += 1
        assert file.current() is kept
    assert reasons == ["missing"]
    write(path, text_of(experiment("back")))
    clock.now += 1
    assert [e.name for e in file.current()] == ["back"]


def test_an_emptied_file_keeps_the_last_good(tmp_path: Path, clock: FakeClock) -> None:
    """A zero-byte file is what a half-done write looks like: not an end to the experiments."""
    path = tmp_path / "experiments.yaml"
    write(path, EXAMPLE)
    file, reasons = watched(path, clock)
    write(path, "")
    clock.now += 1
    assert len(file.current()) == 1
    assert reasons == ["invalid"]


def test_an_empty_list_ends_every_experiment(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "experiments.yaml"
    write(path, EXAMPLE)
    file, reasons = watched(path, clock)
    assert assign(file.current(), "visitor", 1) is not None
    write(path, "version: 1\nexperiments: []\n")
    clock.now += 1
    assert len(file.current()) == 0
    assert assign(file.current(), "visitor", 1) is None
    assert reasons == []


def test_no_path_no_experiments_no_stat(clock: FakeClock) -> None:
    file = ExperimentsFile(None, clock=clock)
    clock.now += 10**6
    assert file.current() is ex.NO_EXPERIMENTS
    assert file.reads == 0
    assert assign(file.current(), "visitor", 1) is None


def test_the_first_load_raises(tmp_path: Path) -> None:
    with pytest.raises(ExperimentsError, match="not found"):
        ExperimentsFile(tmp_path / "absent.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("version: 3\nexperiments: []\n")
    with pytest.raises(ExperimentsError, match="version"):
        ExperimentsFile(path)
    with pytest.raises(ValueError, match="check_seconds"):
        ExperimentsFile(None, check_seconds=math.nan)


def test_a_failing_callback_does_not_break_current(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "experiments.yaml"
    write(path, EXAMPLE)

    def broken(reason: str) -> None:
        raise RuntimeError(reason)

    file = ExperimentsFile(path, on_failure=broken, clock=clock)
    write(path, "nonsense: [")
    clock.now += 1
    assert len(file.current()) == 1
    assert file.failures == 1


def test_concurrent_readers_see_a_whole_value(tmp_path: Path) -> None:
    """Threads calling `current()` while the file changes: every value is one of the files."""
    path = tmp_path / "experiments.yaml"
    names = [f"e{i}" for i in range(20)]
    write(path, text_of(experiment(names[0])))
    file = ExperimentsFile(path, check_seconds=0)
    seen: set[str] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                (only,) = file.current().experiments
                seen.add(only.name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for name in names[1:]:
        write(path, text_of(experiment(name)))
        os.utime(path)
        file.current()
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert seen <= set(names)
    assert [e.name for e in file.current()] == [names[-1]]
    assert file.failures == 0


# --- assignment ---------------------------------------------------------------------------


def parsed(*experiments: dict[str, Any]) -> Experiments:
    return ex.loads(text_of(*experiments))


def test_the_bucket_is_the_documented_hash() -> None:
    import hashlib

    digest = hashlib.blake2b(b"salt:42", digest_size=8).digest()
    assert ex.bucket("salt", 42) == (int.from_bytes(digest, "big") >> 11) / 2**53
    assert ex.bucket("salt", 42) == pytest.approx(int.from_bytes(digest, "big") / 2**64)
    values = [ex.bucket("s", v) for v in range(10_000)]
    assert all(0.0 <= u < 1.0 for u in values)


def test_assignment_is_deterministic_across_loads() -> None:
    first, second = parsed(experiment("exp")), parsed(experiment("exp"))
    for visitor in range(1_000):
        a = assign(first, "visitor", visitor)
        assert a == assign(second, "visitor", visitor)
        assert a == assign(first, "visitor", visitor)
    # pinned: the split must not change between versions of this code (or of Python), or
    # every running experiment would reshuffle its visitors on a deploy
    assert [assign(first, "visitor", v).variant for v in range(12)] == [  # type: ignore[union-attr]
        "control",
        "control",
        "treatment",
        "control",
        "control",
        "control",
        "control",
        "control",
        "control",
        "treatment",
        "control",
        "control",
    ]
    assert ex.bucket("exp", 0) == pytest.approx(0.18287100921441846, abs=1e-15)


@pytest.mark.parametrize(
    "weights",
    [(50, 50), (1, 2, 7), (90, 10), (0.5, 0.25, 0.25), (3, 0, 1, 0)],
)
def test_shares_match_the_weights(weights: tuple[float, ...]) -> None:
    variants = [{"name": f"v{i}", "weight": w, "policy": "ranker"} for i, w in enumerate(weights)]
    experiments = parsed(experiment("shares", variants=variants))
    n = 100_000
    counts = Counter(
        a.variant for v in range(n) if (a := assign(experiments, "visitor", v)) is not None
    )
    total = sum(weights)
    for i, weight in enumerate(weights):
        p = weight / total
        got = counts.get(f"v{i}", 0)
        if weight == 0:
            assert got == 0
        else:
            sigma = math.sqrt(n * p * (1 - p))
            assert abs(got - n * p) <= 4 * sigma, (i, got, n * p)
    assert sum(counts.values()) == n


def test_route_filtering_and_first_running_experiment() -> None:
    experiments = parsed(
        experiment("stopped_one", status="stopped"),
        experiment("visitors", routes=["visitor"]),
        experiment("sessions", routes=["session"]),
        experiment("both_later"),
    )
    assert experiments.by_route["visitor"].name == "visitors"
    assert experiments.by_route["session"].name == "sessions"
    for visitor in range(100):
        on_visitor = assign(experiments, "visitor", visitor)
        on_session = assign(experiments, "session", visitor)
        assert on_visitor is not None and on_visitor.experiment == "visitors"
        assert on_session is not None and on_session.experiment == "sessions"
        assert assign(experiments, "similar", visitor) is None


def test_stopped_experiments_split_no_one() -> None:
    experiments = parsed(experiment("halted", status="stopped"))
    assert all(assign(experiments, route, v) is None for route in ex.ROUTES for v in range(100))
    assert assign(experiments, "visitor", None) is None


def test_a_request_without_a_visitor_gets_the_control_unrecorded() -> None:
    variants = [
        {"name": "control", "weight": 0, "policy": "als"},
        {"name": "treatment", "weight": 1, "policy": {"interleave": ["ranker", "popularity"]}},
    ]
    experiments = parsed(experiment("exp", variants=variants))
    assert assign(experiments, "session", None) == Assignment(Policy("als"), None, None)
    # a visitor never gets the weight-0 control, but is recorded
    assert assign(experiments, "session", 7) == Assignment(
        Policy("interleave", ("ranker", "popularity")), "exp", "treatment"
    )


def test_changing_another_experiment_moves_no_one() -> None:
    visitors_only = experiment("visitors", routes=["visitor"])
    before = parsed(visitors_only, experiment("sessions", routes=["session"]))
    changed_sessions = experiment(
        "sessions",
        routes=["session"],
        salt="new",
        variants=[
            {"name": "control", "weight": 10, "policy": "ranker"},
            {"name": "b", "weight": 80, "policy": "als"},
            {"name": "c", "weight": 10, "policy": "popularity"},
        ],
    )
    after = parsed(visitors_only, changed_sessions)
    moved_sessions = 0
    for visitor in range(5_000):
        assert assign(before, "visitor", visitor) == assign(after, "visitor", visitor)
        b, a = assign(before, "session", visitor), assign(after, "session", visitor)
        moved_sessions += b is not None and a is not None and b.variant != a.variant
    assert moved_sessions > 1_000  # the edited experiment did reshuffle (the test can fail)


def test_raising_a_weight_moves_only_the_visitors_of_the_moved_slice() -> None:
    before = parsed(experiment("exp"))
    after = parsed(
        experiment(
            "exp",
            variants=[
                {"name": "control", "weight": 60, "policy": "ranker"},
                {"name": "treatment", "weight": 40, "policy": "popularity"},
            ],
        )
    )
    moves: Counter[tuple[str | None, str | None]] = Counter()
    for visitor in range(20_000):
        b, a = assign(before, "visitor", visitor), assign(after, "visitor", visitor)
        assert b is not None and a is not None
        if b.variant != a.variant:
            moves[(b.variant, a.variant)] += 1
    assert set(moves) == {("treatment", "control")}  # nobody left the control
    assert abs(moves[("treatment", "control")] - 2_000) < 4 * math.sqrt(20_000 * 0.1 * 0.9)


def test_the_salt_decides_the_split() -> None:
    a = parsed(experiment("exp", salt="one"))
    b = parsed(experiment("exp", salt="two"))
    same_name_as_salt = parsed(experiment("one"))
    variants_a = [assign(a, "visitor", v).variant for v in range(2_000)]  # type: ignore[union-attr]
    variants_b = [assign(b, "visitor", v).variant for v in range(2_000)]  # type: ignore[union-attr]
    assert variants_a != variants_b
    assert variants_a == [
        assign(same_name_as_salt, "visitor", v).variant  # type: ignore[union-attr]
        for v in range(2_000)
    ]


def test_numpy_visitor_ids_assign_as_ints() -> None:
    experiments = parsed(experiment("exp"))
    for visitor in (0, 5, 123_456_789, 10**18 - 1):
        assert assign(experiments, "visitor", np.int64(visitor)) == assign(  # type: ignore[arg-type]
            experiments, "visitor", visitor
        )


# --- team-draft interleaving --------------------------------------------------------------


def check_team_draft(a: list[int], b: list[int], k: int, seed: int) -> tuple[list[int], list[str]]:
    """Run team_draft and check every property the algorithm promises."""
    items, teams = team_draft(a, b, k, seed, "A", "B")
    assert isinstance(items, list) and all(type(i) is int for i in items)
    assert len(items) == len(teams)
    assert len(set(items)) == len(items)  # no duplicates
    assert len(items) == min(k, len(set(a) | set(b)))
    for team, ranking in (("A", a), ("B", b)):
        picked = [item for item, t in zip(items, teams, strict=True) if t == team]
        assert all(item in ranking for item in picked)
        positions = [ranking.index(item) for item in picked]
        assert positions == sorted(positions)  # in the team's own order
        # a team always takes its best item not yet in the list
        for n, (item, t) in enumerate(zip(items, teams, strict=True)):
            if t == team:
                best = next(i for i in ranking if i not in items[:n])
                assert item == best
    # balanced: while both rankings still had an item to give, the teams differ by <= 1
    for n in range(1, len(items) + 1):
        prefix = items[:n]
        count_a, count_b = teams[:n].count("A"), teams[:n].count("B")
        a_left = any(i not in prefix for i in a)
        b_left = any(i not in prefix for i in b)
        if a_left and b_left:
            assert abs(count_a - count_b) <= 1, (n, teams)
    return items, teams


def test_team_draft_properties_on_random_rankings() -> None:
    rng = np.random.default_rng(7)
    for trial in range(300):
        pool = rng.permutation(40)[: int(rng.integers(0, 40))]
        a = [int(i) for i in rng.permutation(pool)[: int(rng.integers(0, len(pool) + 1))]]
        b = [int(i) for i in rng.permutation(pool)[: int(rng.integers(0, len(pool) + 1))]]
        check_team_draft(a, b, int(rng.integers(0, 45)), seed=trial)


def test_identical_rankings_give_the_ranking_itself() -> None:
    ranking = [5, 3, 9, 1, 7, 2]
    for seed in range(20):
        items, teams = check_team_draft(ranking, ranking, 10, seed)
        assert items == ranking
        assert abs(teams.count("A") - teams.count("B")) <= 1


def test_team_draft_is_deterministic_and_both_coins_happen() -> None:
    a, b = [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]
    firsts: Counter[str] = Counter()
    for seed in range(200):
        items, teams = team_draft(a, b, 6, seed, "ranker", "als")
        assert (items, teams) == team_draft(a, b, 6, seed, "ranker", "als")
        firsts[teams[0]] += 1
        # each pair of picks has one of each team (the coin decides the order only)
        for pair in range(3):
            assert sorted(teams[2 * pair : 2 * pair + 2]) == ["als", "ranker"]
    assert firsts["ranker"] > 50 and firsts["als"] > 50  # a fair coin, both sides


def test_the_hand_worked_example() -> None:
    """A = 1 2 3 4, B = 3 5 1 6; whatever the coins, the rules fix this much."""
    items, teams = check_team_draft([1, 2, 3, 4], [3, 5, 1, 6], 10, seed=0)
    assert sorted(items) == [1, 2, 3, 4, 5, 6]
    first_two = dict(zip(teams[:2], items[:2], strict=True))
    assert first_two["A"] == 1  # A's best
    assert first_two["B"] == 3  # B's best, whether or not A picked 1 first


def test_one_side_empty_or_shorter() -> None:
    assert team_draft([], [4, 5, 6], 2, 1, "A", "B") == ([4, 5], ["B", "B"])
    assert team_draft([4, 5, 6], [], 5, 1, "A", "B") == ([4, 5, 6], ["A", "A", "A"])
    assert team_draft([], [], 5, 1, "A", "B") == ([], [])
    _, teams = check_team_draft([1], [2, 3, 4, 5], 10, seed=3)
    assert teams.count("A") == 1 and teams.count("B") == 4
    assert team_draft([1, 2], [3, 4], 0, 1, "A", "B") == ([], [])


def test_numpy_inputs_give_plain_lists() -> None:
    a = np.array([10, 20, 30], dtype=np.int64)
    b = np.array([30, 40], dtype=np.int64)
    items, teams = team_draft(a, b, 10, 99, "ranker", "popularity")
    assert items == team_draft(a.tolist(), b.tolist(), 10, 99, "ranker", "popularity")[0]
    assert all(type(i) is int for i in items)
    assert all(type(t) is str for t in teams)


def test_team_draft_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        team_draft([1], [2], -1, 0, "A", "B")
    with pytest.raises(ValueError):
        team_draft([1], [2], 2, 0, "A", "A")


def test_interleaving_seed_is_stable_and_varies() -> None:
    seed = ex.interleaving_seed("exp", 42, "20250101T000000Z-abc")
    assert seed == ex.interleaving_seed("exp", 42, "20250101T000000Z-abc")
    assert seed != ex.interleaving_seed("exp", 43, "20250101T000000Z-abc")
    assert seed != ex.interleaving_seed("exp", 42, "20250102T000000Z-abc")
    assert 0 <= seed < 2**64


def test_a_number_on_a_slice_bound_never_lands_on_a_weight_0_variant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """u = 0.0 and u exactly on a bound: the next positive slice, never a weight-0 one."""
    variants = [
        {"name": "paused", "weight": 0, "policy": "ranker"},
        {"name": "half", "weight": 1, "policy": "als"},
        {"name": "also_paused", "weight": 0, "policy": "ranker"},
        {"name": "other_half", "weight": 1, "policy": "popularity"},
        {"name": "paused_last", "weight": 0, "policy": "ranker"},
    ]
    experiments = parsed(experiment("bounds", variants=variants))
    for u, variant in [
        (0.0, "half"),
        (0.25, "half"),
        (0.5, "other_half"),
        (1 - 2**-53, "other_half"),
    ]:
        monkeypatch.setattr(ex, "bucket", lambda salt, visitor, u=u: u)
        got = assign(experiments, "visitor", 1)
        assert got is not None and got.variant == variant, (u, got)


def test_no_request_waits_for_another_threads_check(tmp_path: Path, clock: FakeClock) -> None:
    """While one thread checks the file (here: holds the lock), others get the current value
    at once, and the check stays due for the next caller."""
    path = tmp_path / "experiments.yaml"
    write(path, text_of(experiment("old")))
    file = ExperimentsFile(path, clock=clock)
    write(path, text_of(experiment("new")))
    clock.now += 1
    file._lock.acquire()
    try:
        answered: list[str] = []
        thread = threading.Thread(
            target=lambda: answered.extend(e.name for e in file.current()), daemon=True
        )
        thread.start()
        thread.join(timeout=5)
        assert answered == ["old"]
    finally:
        file._lock.release()
    assert [e.name for e in file.current()] == ["new"]


def test_every_loaded_name_matches_the_exported_pattern() -> None:
    for experiment_ in ex.loads(EXAMPLE):
        assert ex.NAME.fullmatch(experiment_.name)
        assert all(ex.NAME.fullmatch(name) for name in experiment_.variant_names)
    assert not ex.NAME.fullmatch('a"b')


def test_the_warehouse_gets_controls_and_declared_weights(tmp_path: Path) -> None:
    """`recsys build` passes the file's first variants and weights as dbt vars, so that the
    analysis takes the control and the expected shares from the file traffic is split by."""
    from recsys.settings import Settings
    from recsys.warehouse import BuildError, _declared_experiments

    path = tmp_path / "experiments.yaml"
    path.write_text(
        "version: 1\nexperiments:\n  - name: e\n    variants:\n"
        "      - {name: base, weight: 60, policy: ranker}\n"
        "      - {name: pop, weight: 40, policy: popularity}\n"
    )
    settings = Settings(_env_file=None, recsys_experiments_file=path)  # type: ignore[call-arg]
    assert _declared_experiments(settings) == {
        "experiment_controls": {"e": "base"},
        "experiment_weights": {"e": {"base": 60.0, "pop": 40.0}},
    }
    assert _declared_experiments(Settings(_env_file=None)) == {}  # type: ignore[call-arg]
    path.write_text("version: 1\nexperiments: [oops]\n")
    with pytest.raises(BuildError, match="RECSYS_EXPERIMENTS_FILE"):
        _declared_experiments(settings)
