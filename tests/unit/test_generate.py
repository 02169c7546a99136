"""Generator: the RetailRocket layout, determinism and the shape of the data."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from recsys.generate import (
    LATENT_FILE,
    LATENT_FORMAT_VERSION,
    N_DAYS,
    N_SNAPSHOTS,
    PRIMARY_TASTE,
    generate,
    latent_constants,
)

FILES = (
    "events.csv",
    "item_properties_part1.csv",
    "item_properties_part2.csv",
    "category_tree.csv",
)


def digest(folder: Path) -> dict[str, str]:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in FILES}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("tiny")
    return out, generate("tiny", 7, out)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("small")
    return out, generate("small", 42, out)


def test_layout_is_retailrocket(tiny: tuple[Path, dict[str, int]]) -> None:
    out, _ = tiny
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, LATENT_FILE])
    first = {f: (out / f).read_text().splitlines()[:2] for f in FILES}
    assert first["events.csv"][0] == "timestamp,visitorid,event,itemid,transactionid"
    assert first["category_tree.csv"][0] == "categoryid,parentid"
    for part in ("item_properties_part1.csv", "item_properties_part2.csv"):
        assert first[part][0] == "timestamp,itemid,property,value"
    with open(out / "events.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        assert len(row["timestamp"]) == 13 and row["timestamp"].isdigit()  # epoch milliseconds
        assert row["event"] in {"view", "addtocart", "transaction"}
        # a transaction id exactly on transaction rows, empty elsewhere
        assert (row["transactionid"] != "") == (row["event"] == "transaction")


def test_same_seed_same_bytes_other_seed_other_bytes(
    tmp_path: Path, tiny: tuple[Path, dict[str, int]]
) -> None:
    out, counts = tiny
    again = generate("tiny", 7, tmp_path / "again")
    assert again == counts
    assert digest(tmp_path / "again") == digest(out)
    generate("tiny", 8, tmp_path / "other")
    assert digest(tmp_path / "other")["events.csv"] != digest(out)["events.csv"]


def test_tiny_is_a_few_thousand_events(tiny: tuple[Path, dict[str, int]]) -> None:
    _, counts = tiny
    assert 2_000 <= counts["events"] <= 10_000
    assert counts["days"] == N_DAYS


def test_properties_look_like_retailrocket(tiny: tuple[Path, dict[str, int]]) -> None:
    out, _ = tiny
    con = duckdb.connect()
    con.execute(
        "create view props as select * from "
        f"read_csv('{out}/item_properties_part*.csv', all_varchar=true)"
    )
    names = {r[0] for r in con.sql("select distinct property from props").fetchall()}
    assert {"categoryid", "available", "790"} <= names
    assert any(n.isdigit() for n in names - {"790"})  # hashed property ids
    available = con.sql("select distinct value from props where property = 'available'")
    assert {v[0] for v in available.fetchall()} == {"0", "1"}
    price = con.sql("select value from props where property = '790' limit 1").fetchall()[0]
    assert price[0].startswith("n") and price[0].endswith(".000")
    # weekly snapshots, Sundays 03:00 UTC
    stamps = con.sql(
        "select distinct epoch_ms(timestamp::bigint) as t from props order by t"
    ).fetchall()
    assert len(stamps) >= 10
    assert all(t[0].weekday() == 6 and t[0].hour == 3 for t in stamps)


def test_category_tree_is_a_tree_with_roots(tiny: tuple[Path, dict[str, int]]) -> None:
    out, _ = tiny
    with open(out / "category_tree.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    parent = {int(r["categoryid"]): int(r["parentid"]) if r["parentid"] else None for r in rows}
    assert len(parent) == len(rows)  # one parent per category
    roots = [c for c, p in parent.items() if p is None]
    assert roots
    for category in parent:  # every chain ends at a root, without cycles
        seen, node = set(), category
        while parent[node] is not None:
            assert node not in seen
            seen.add(node)
            node = parent[node]  # type: ignore[assignment]


def test_small_has_the_shape_of_real_data(small: tuple[Path, dict[str, int]]) -> None:
    out, counts = small
    assert 250_000 <= counts["events"] <= 350_000
    con = duckdb.connect()
    con.execute(f"create view e as select * from read_csv('{out}/events.csv')")
    # funnel: RetailRocket has 2.6% add-to-carts per view and 32% purchases per add-to-cart
    assert 0.018 <= counts["addtocarts"] / counts["views"] <= 0.035
    assert 0.25 <= counts["transactions"] / counts["addtocarts"] <= 0.40
    # transactions group one or more items
    assert counts["transactions"] > counts["transaction_ids"]
    # most visitors have one event; a few have many
    assert counts["single_event_visitor_share"] > 0.5
    heavy = con.execute(
        "select max(n) from (select count(*) n from e group by visitorid)"
    ).fetchone()
    assert heavy is not None and heavy[0] >= 30
    # heavy-tailed item popularity: the top 1% of items take a large share of the views
    share = con.execute(
        """
        with v as (select itemid, count(*) n from e where event = 'view' group by 1)
        select sum(n) filter (where r <= (select count(*) from v) / 100) / sum(n)
        from (select n, row_number() over (order by n desc) r from v)
        """
    ).fetchone()
    assert share is not None and share[0] > 0.15
    # 139 days of events
    span = con.execute("select (max(timestamp) - min(timestamp)) / 86400000 from e").fetchone()
    assert span is not None and 135 <= span[0] <= 139
    # returning visitors come back to the categories they like: a visitor's events are far more
    # concentrated on a few items' categories than chance would give (checked via items seen
    # again in a later session)
    revisit = con.execute(
        """
        with v as (
            select visitorid, itemid, timestamp,
                min(timestamp) over (partition by visitorid, itemid) as first_seen
            from e where event = 'view'
        )
        select count(distinct visitorid) filter (where timestamp - first_seen > 3600000)
        from v
        """
    ).fetchone()
    assert revisit is not None and revisit[0] > 1_000


def latent_of(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    with np.load(folder / LATENT_FILE, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    return arrays, json.loads(str(arrays.pop("meta")))


def test_the_latent_state_matches_the_csvs(tiny: tuple[Path, dict[str, int]]) -> None:
    out, counts = tiny
    latent, meta = latent_of(out)
    assert meta["format_version"] == LATENT_FORMAT_VERSION
    assert (meta["scale"], meta["seed"], meta["revisits"]) == ("tiny", 7, "retailrocket")
    assert meta["constants"] == latent_constants()
    assert meta["constants"]["PRIMARY_TASTE"] == PRIMARY_TASTE  # type: ignore[index]
    assert meta["n_transaction_ids"] == counts["transaction_ids"]
    assert isinstance(meta["cart_bias"], float) and isinstance(meta["purchase_bias"], float)
    con = duckdb.connect()
    con.execute(
        "create view props as select timestamp::bigint as ts, itemid::bigint as item, property, "
        f"value from read_csv('{out}/item_properties_part*.csv', all_varchar=true)"
    )

    def first_and_last(prop: str) -> dict[int, tuple[str, str]]:
        rows = con.execute(
            "select item, arg_min(value, ts), arg_max(value, ts) from props "
            "where property = ? group by item",
            [prop],
        ).fetchall()
        return {int(r[0]): (r[1], r[2]) for r in rows}

    items = latent["item_id"]
    has = latent["item_has_properties"]
    assert len(items) == len(np.unique(items)) and (np.diff(items) > 0).all()
    categories = first_and_last("categoryid")
    prices = first_and_last("790")
    available = first_and_last("available")
    assert set(categories) == set(items[has].tolist()) == set(prices)
    for i in np.flatnonzero(has):
        item = int(items[i])
        assert categories[item][0] == str(latent["item_category"][i])
        assert prices[item] == (
            f"n{latent['item_price'][i]}.000",
            f"n{latent['item_price_last'][i]}.000",
        )
        moved = latent["item_moved_at"][i] < N_SNAPSHOTS
        assert categories[item][1] == str(
            latent["item_moved_category"][i] if moved else latent["item_category"][i]
        )
        gone = latent["item_unavailable_from"][i] < N_SNAPSHOTS
        assert available[item][1] == ("0" if gone else "1")
    # categories: the tree's ids and parents
    with open(out / "category_tree.csv", newline="") as fh:
        tree = {int(r["categoryid"]): int(r["parentid"] or -1) for r in csv.DictReader(fh)}
    assert (
        dict(zip(latent["category_id"].tolist(), latent["category_parent"].tolist(), strict=True))
        == tree
    )
    assert set(latent["item_category"].tolist()) <= set(tree)
    assert set(latent["visitor_primary"].tolist()) | set(
        latent["visitor_secondary"].tolist()
    ) <= set(tree)
    # visitors: every visitor of events.csv, and no other; items they were last seen opening on
    visitors = {
        r[0]
        for r in con.execute(
            f"select distinct visitorid from read_csv('{out}/events.csv')"
        ).fetchall()
    }
    assert set(latent["visitor_id"].tolist()) == visitors
    assert len(latent["visitor_id"]) == counts["visitors"]
    viewed = {
        r[0]
        for r in con.execute(f"select distinct itemid from read_csv('{out}/events.csv')").fetchall()
    }
    assert set(latent["visitor_last_item"].tolist()) <= viewed
    # items never viewed have no weight; loyal visitors have more sessions
    assert (latent["item_base_weight"] >= 0).all()
    assert (
        latent["visitor_sessions"][latent["visitor_loyal"]].mean()
        > 3 * latent["visitor_sessions"][~latent["visitor_loyal"]].mean()
    )


def test_the_latent_file_is_compact(small: tuple[Path, dict[str, int]]) -> None:
    out, _ = small
    assert (out / LATENT_FILE).stat().st_size < 5_000_000
