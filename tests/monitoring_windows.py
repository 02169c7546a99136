"""A new week of events for the monitoring tests, landed as the API lands events.

`land_week(settings, shift=None)` takes the lake's last `days` days of raw events and lands them
again `days` later in `landing/events/`, where the next ingest (the command's, or the DAGs')
picks them up: the shop's same behaviour for one more week. With `shift="event_mix"` every
second view becomes an add-to-cart, on purpose: the event-type mix of that week moves from
mostly views to about half carts, and nothing else changes.
"""

from __future__ import annotations

import duckdb

from api.events import to_csv
from recsys.lake import Lake
from recsys.settings import Settings

SHIFTS = (None, "event_mix")


def land_week(settings: Settings, shift: str | None = None, days: int = 7) -> int:
    """Land the replayed window; the number of events landed."""
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {SHIFTS}")
    lake = Lake.from_settings(settings)
    pattern = lake.url("raw/events/*.parquet")
    span = days * 86_400_000
    with duckdb.connect() as con:
        rows = con.execute(
            f"""
            with latest as (select max("timestamp") as at from read_parquet('{pattern}'))
            select
                "timestamp" + {span} as "timestamp",
                visitorid,
                case
                    when ? = 'event_mix' and event = 'view' and row_number() over (
                        order by "timestamp", visitorid, itemid
                    ) % 2 = 0 then 'addtocart'
                    else event
                end as event,
                itemid,
                transactionid
            from read_parquet('{pattern}'), latest
            where "timestamp" > latest.at - {span}
            order by "timestamp"
            """,
            [shift or ""],
        ).fetchall()
    body = to_csv([(int(t), int(v), str(e), int(i), tx, None) for t, v, e, i, tx in rows])
    lake.write_text(f"landing/events/replayed-week-{shift or 'same'}.csv", body)
    return len(rows)
