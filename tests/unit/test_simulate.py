"""The simulated shoppers: the behaviour model (pure, no server) and the HTTP part against stubs."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.generate import LATENT_FILE, generate
from recsys.simulate import (
    Api,
    Behaviour,
    Recommend,
    Report,
    Shop,
    Shopper,
    Shown,
    SimulateError,
    draw_shopper,
    load_shop,
    run_shopper,
    shopper_rng,
    simulate_session,
    transaction_id,
)

SEED = 11
IMPRESSION = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    out = tmp_path_factory.mktemp("tiny")
    generate("tiny", 7, out)
    return load_shop(out / LATENT_FILE)


def top_of(shop: Shop, category: int, n: int = 10) -> tuple[int, ...]:
    """The category's most popular items this week: a list that matches a taste."""
    members = shop.order[shop.cat_lo[category] : shop.cat_hi[category]]
    best = members[np.argsort(-shop.item_weight[members], kind="stable")[:n]]
    return tuple(int(i) for i in shop.item_id[best])


def outside_tastes(shop: Shopper, s: Shop, n: int = 10) -> tuple[int, ...]:
    """Unpopular items of categories that are neither of the shopper's tastes."""
    other = (s.item_category != shop.primary) & (s.item_category != shop.secondary)
    candidates = np.flatnonzero(other & (s.item_weight > 0))
    least = candidates[np.argsort(s.item_weight[candidates], kind="stable")[:n]]
    return tuple(int(i) for i in s.item_id[least])


def fixed(items: tuple[int, ...] | None) -> Recommend:
    """A recommender that shows `items` (None: no list) whatever the session holds."""

    def recommend(_session: Sequence[int]) -> Shown | None:
        return None if items is None else Shown(items, IMPRESSION)

    return recommend


def play(
    shop: Shop,
    shoppers: int,
    lists: Any,
    behaviour: Behaviour | None = None,
    seed: int = SEED,
) -> Counter[str]:
    """Sessions of `shoppers` shoppers, each shown `lists(shopper)` (None: no list)."""
    behaviour = behaviour or Behaviour()
    counts: Counter[str] = Counter()
    for number in range(shoppers):
        shopper = draw_shopper(shop, seed, number, behaviour)
        shown = lists(shopper)
        previous = shopper.last_item
        for session in range(shopper.n_sessions):
            outcome = simulate_session(
                shop,
                shopper,
                previous,
                behaviour,
                shopper_rng(seed, number, session),
                fixed(shown),
                transaction_id(shop, seed, shopper, session),
            )
            previous = outcome.first_item
            counts["sessions"] += 1
            counts["shown"] += 0 if shown is None else len(shown)
            for action in outcome.actions:
                counts[action.event] += 1
                counts[f"{action.event}/recommended"] += action.recommended
    return counts


def test_same_seed_same_actions(shop: Shop) -> None:
    behaviour = Behaviour(session_requests=True)

    def session(seed: int, number: int) -> Any:
        shopper = draw_shopper(shop, seed, number, behaviour)
        return shopper, simulate_session(
            shop,
            shopper,
            shopper.last_item,
            behaviour,
            shopper_rng(seed, number, 0),
            lambda items: Shown(top_of(shop, shopper.primary), IMPRESSION),
            transaction_id(shop, seed, shopper, 0),
        )

    runs = [session(SEED, n) for n in range(200)]
    assert runs == [session(SEED, n) for n in range(200)]
    assert runs != [session(SEED + 1, n) for n in range(200)]


def test_relevant_shown_items_are_clicked_far_more_than_irrelevant_ones(shop: Shop) -> None:
    popular = tuple(int(i) for i in shop.item_id[np.argsort(-shop.item_weight)[:10]])
    personal = play(shop, 1500, lambda s: top_of(shop, s.primary))
    overall = play(shop, 1500, lambda s: popular)
    irrelevant = play(shop, 1500, lambda s: outside_tastes(s, shop))

    def ctr(counts: Counter[str]) -> float:
        return counts["view/recommended"] / counts["shown"]

    assert ctr(personal) > 0.03
    assert ctr(personal) > 1.25 * ctr(overall)  # tiny data: the popular items are few
    assert ctr(personal) > 30 * max(ctr(irrelevant), 1e-4)
    # the list moves attention, not the number of views
    assert personal["view"] == irrelevant["view"]


def test_a_list_outside_the_tastes_leaves_behaviour_as_organic(shop: Shop) -> None:
    organic = play(shop, 1500, lambda s: None)
    irrelevant = play(shop, 1500, lambda s: outside_tastes(s, shop))
    assert irrelevant["sessions"] == organic["sessions"]
    for event in ("view", "addtocart", "transaction"):
        assert irrelevant[event] == pytest.approx(organic[event], rel=0.03)
    assert irrelevant["view/recommended"] < 0.01 * irrelevant["view"]


def test_unavailable_items_are_viewed_but_never_carted_or_bought(shop: Shop) -> None:
    unavailable = set(shop.item_id[~shop.item_available].tolist())
    assert unavailable

    def unavailable_of_taste(shopper: Shopper) -> tuple[int, ...]:
        cats = shop.item_category[shop.item_index(sorted(unavailable))]
        mine = [i for i, c in zip(sorted(unavailable), cats, strict=True) if c == shopper.primary]
        return tuple(mine[:10]) or tuple(sorted(unavailable)[:10])

    behaviour = Behaviour(boost=50.0, sessions=3)
    seen: Counter[str] = Counter()
    for number in range(800):
        shopper = draw_shopper(shop, SEED, number, behaviour)
        shown = unavailable_of_taste(shopper)
        outcome = simulate_session(
            shop,
            shopper,
            shopper.last_item,
            behaviour,
            shopper_rng(SEED, number, 0),
            fixed(shown),
            transaction_id(shop, SEED, shopper, 0),
        )
        for action in outcome.actions:
            seen[action.event] += action.item_id in unavailable
            seen[f"all {action.event}"] += 1
    assert seen["view"] > 30  # the list makes shoppers look at them
    assert seen["all addtocart"] > 0
    assert seen["addtocart"] == 0 and seen["transaction"] == 0


def test_events_in_time_order_with_the_impression_of_their_list(shop: Shop) -> None:
    behaviour = Behaviour(boost=20.0, session_requests=True, sessions=1)
    checked = 0
    for number in range(600):
        shopper = draw_shopper(shop, SEED, number, behaviour)
        asked: list[tuple[list[int], Shown]] = []

        def recommend(
            items: Sequence[int],
            shopper: Shopper = shopper,
            asked: list[tuple[list[int], Shown]] = asked,
        ) -> Shown:
            # each call a new list (rotated) with its own impression id
            base = top_of(shop, shopper.primary, 12)
            n = len(asked)
            shown = Shown(base[n % 3 :][:10], f"{n:032x}")
            asked.append((list(items), shown))
            return shown

        outcome = simulate_session(
            shop,
            shopper,
            shopper.last_item,
            behaviour,
            shopper_rng(SEED, number, 0),
            recommend,
            transaction_id(shop, SEED, shopper, 0),
        )
        actions = outcome.actions
        assert [a.offset_ms for a in actions] == sorted(a.offset_ms for a in actions)
        views = [a for a in actions if a.event == "view"]
        # the first list before any view; then one after each view but the last, with the
        # session's items so far
        assert len(asked) == len(views)
        assert [items for items, _ in asked] == [
            [v.item_id for v in views[:k]] for k in range(len(views))
        ]
        for k, view in enumerate(views):
            shown = asked[k][1]
            if view.item_id in shown.items:
                assert view.impression_id == shown.impression_id
                assert view.rank == shown.items.index(view.item_id) + 1
                checked += 1
            else:
                assert view.impression_id is None and view.rank is None
        by_id = {s.impression_id: s for _, s in asked}
        for action in actions:
            if action.impression_id is not None:
                assert action.rank is not None
                assert by_id[action.impression_id].items[action.rank - 1] == action.item_id
            assert (action.transaction_id is not None) == (action.event == "transaction")
    assert checked > 50


def test_shoppers_known_by_their_sessions_or_new_with_fresh_ids(shop: Shop) -> None:
    known_ids = set(shop.visitor_id.tolist())
    behaviour = Behaviour(new_share=0.25)
    shoppers = [draw_shopper(shop, SEED, n, behaviour) for n in range(4000)]
    new = [s for s in shoppers if not s.known]
    known = [s for s in shoppers if s.known]
    assert 0.2 < len(new) / len(shoppers) < 0.3
    assert all(s.visitor_id in known_ids for s in known)
    assert all(s.visitor_id > max(known_ids) for s in new)
    assert len({s.visitor_id for s in new}) == len(new)
    # returning visitors are favoured: loyal ones far above their 5% of the visitors
    assert np.mean([s.loyal for s in known]) > 0.15
    assert np.mean([s.loyal for s in new]) < 0.1
    # new shoppers' tastes are leaves, as the generator's are
    leaves = set(shop.leaves.tolist())
    assert all(s.primary in leaves and s.secondary in leaves for s in new)
    # another seed, other new ids
    other = {
        draw_shopper(shop, SEED + 1, n, Behaviour(new_share=1.0)).visitor_id for n in range(50)
    }
    assert not other & {s.visitor_id for s in new}


# --- the HTTP part, against stubs ----------------------------------------------------------


class StubApi:
    """Answers like the API (with or without impression ids), records every request."""

    def __init__(self, impressions: bool, events_status: int = 202) -> None:
        self.impressions = impressions
        self.events_status = events_status
        self.requests: list[tuple[str, str, Any, str | None]] = []
        self.served = 0

    def request(
        self, method: str, path: str, body: Any = None, idempotency_key: str | None = None
    ) -> tuple[int, Any]:
        self.requests.append((method, path, body, idempotency_key))
        if path == "/v1/events":
            return self.events_status, {"detail": "refused"}
        self.served += 1
        answer: dict[str, Any] = {
            "items": [{"item_id": int(i), "rank": r} for r, i in enumerate(self.items, 1)],
            "strategy": "popular",
        }
        if self.impressions:
            answer |= {
                "impression_id": f"{self.served:032x}",
                "experiment": "exp",
                "variant": "b",
            }
        return 200, answer

    items: Sequence[int] = ()


@pytest.mark.parametrize("impressions", [True, False])
def test_run_shopper_posts_stamped_keyed_events(shop: Shop, impressions: bool) -> None:
    api = StubApi(impressions)
    api.items = top_of(shop, int(np.argmax(shop.category_total)))
    total = Report()
    before = time.time_ns() // 1_000_000
    for number in range(60):
        total.merge(
            run_shopper(
                api,  # type: ignore[arg-type]
                shop,
                SEED,
                number,
                Behaviour(boost=20.0),
                time.monotonic() + 60,
                threading.Event(),
            )
        )
    after = time.time_ns() // 1_000_000
    posts = [r for r in api.requests if r[1] == "/v1/events"]
    assert total.shoppers == 60 and total.events_posted == sum(len(p[2]) for p in posts) > 0
    keys = [p[3] for p in posts]
    assert len(set(keys)) == len(keys)
    assert all(k is not None and k.startswith(f"sim-{SEED}-") for k in keys)
    with_impression = 0
    for _, _, events, _ in posts:
        stamps = [e["timestamp"] for e in events]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert before <= stamps[0] and stamps[-1] <= after
        with_impression += sum("impression_id" in e for e in events)
        for e in events:
            assert ("transactionid" in e) == (e["event"] == "transaction")
    recommended = sum(v for k, v in total.actions.items() if k.endswith("/recommended"))
    assert recommended > 0
    if impressions:
        assert with_impression == recommended
        assert total.impressions == total.recommendation_calls
        assert total.experiments == Counter({"exp/b": total.recommendation_calls})
    else:  # an API without impression ids: events without one (it would refuse the field)
        assert with_impression == 0 and total.impressions == 0 and not total.experiments


def test_refused_events_are_counted_and_a_refused_key_stops(shop: Shop) -> None:
    api = StubApi(True, events_status=409)
    report = run_shopper(
        api,  # type: ignore[arg-type]
        shop,
        SEED,
        0,
        Behaviour(sessions=2),
        time.monotonic() + 60,
        threading.Event(),
    )
    assert report.events_posted == 0 and report.events_refused > 0
    assert all(k.startswith("409") for k in report.refusals)
    api = StubApi(True, events_status=401)
    stop = threading.Event()
    with pytest.raises(SimulateError, match="refused the key"):
        run_shopper(api, shop, SEED, 0, Behaviour(), time.monotonic() + 60, stop)  # type: ignore[arg-type]
    assert stop.is_set()


@pytest.fixture
def flaky_server() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A local HTTP server that fails the first request to each path with a 503."""
    seen: list[tuple[str, str | None]] = []
    failed: set[str] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append((self.path, self.headers.get("Idempotency-Key")))
            status = 200
            if self.path not in failed:
                failed.add(self.path)
                status = 503
            body = json.dumps({"ok": status == 200}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_api_retries_5xx_with_the_same_key(
    flaky_server: tuple[str, list[tuple[str, str | None]]],
) -> None:
    url, seen = flaky_server
    api = Api(url, api_key=None, retries=2)
    status, body = api.request("POST", "/v1/events", [{"a": 1}], idempotency_key="sim-1-2-3")
    assert (status, body) == (200, {"ok": True})
    assert seen == [("/v1/events", "sim-1-2-3")] * 2
    api.close()


def test_no_api_is_a_clear_error() -> None:
    with pytest.raises(SimulateError, match="no API answering"):
        Api("http://127.0.0.1:9", api_key=None, retries=0).check()
    with pytest.raises(SimulateError, match="not an http"):
        Api("ftp://example", api_key=None)


def test_a_missing_or_foreign_latent_file_is_a_clear_error(tmp_path: Path) -> None:
    from recsys.simulate import LatentError

    with pytest.raises(LatentError, match="no latent file"):
        load_shop(tmp_path / "latent.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(LatentError, match="not a readable latent file"):
        load_shop(tmp_path / "bad.npz")
    np.savez(tmp_path / "old.npz", meta=np.array(json.dumps({"format_version": 0})))
    with pytest.raises(LatentError, match="latent format 0"):
        load_shop(tmp_path / "old.npz")
