"""The closed loop's statistics on simulated shoppers (`make bench-loop`): does the analysis in
SQL find a real difference, keep its false positives at 5%, catch a sample ratio mismatch, and
does interleaving need fewer visitors than an A/B test?

One service, one lake, phases of simulated traffic, each with its own experiments file (the
service reloads it) and simulator seed; then one ingest and one `recsys build`:

- `ab_popularity`: the ranker's lists against popularity, 50/50;
- `ab_als`: the ranker's lists against ALS's own order, 50/50;
- `il_als`: the same two interleaved by team draft, for everyone;
- `srm_60_40`: two identical variants split 60/40 while the analysis expects 50/50 (no
  `experiment_weights` given: equal shares);
- `aa_00` .. `aa_19`: two identical variants, 50/50, twenty experiments with their own salts
  and shoppers.

Then from the warehouse: the A/B table, the share of A/A p-values below 0.05 (with its binomial
interval), the SRM flags, and for `ab_als` and `il_als` how many visitors each needed before
its verdict held (p < 0.05 from then on, visitors taken in a fixed random order; the
A/B's CTR by the delta method as `experiment_results` computes it, interleaving by the sign
test of `interleaving_results`).

    python benchmarks/bench_loop.py --work-dir data/bench/loop [--ab-shoppers 8000] ...
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.loop import Phase, query, run_loop, table


def experiment(name: str, variants: list[tuple[str, float, object]]) -> str:
    body = {
        "version": 1,
        "experiments": [
            {
                "name": name,
                "routes": ["visitor", "session"],
                "variants": [{"name": n, "weight": w, "policy": p} for n, w, p in variants],
            }
        ],
    }
    return json.dumps(body)  # JSON is YAML


def phases(args: argparse.Namespace) -> list[Phase]:
    out = (
        []
        if args.aa_only
        else [
            Phase(
                experiment(
                    "ab_popularity", [("control", 50, "ranker"), ("popular", 50, "popularity")]
                ),
                seed=101,
                shoppers=args.ab_shoppers,
                duration=args.max_seconds,
            ),
            Phase(
                experiment("ab_als", [("control", 50, "ranker"), ("als", 50, "als")]),
                seed=102,
                shoppers=args.ab_shoppers,
                duration=args.max_seconds,
            ),
            Phase(
                experiment(
                    "il_als",
                    [
                        ("control", 0, "ranker"),
                        ("interleaved", 1, {"interleave": ["ranker", "als"]}),
                    ],
                ),
                seed=103,
                shoppers=args.il_shoppers,
                duration=args.max_seconds,
            ),
            Phase(
                experiment("srm_60_40", [("control", 60, "ranker"), ("twin", 40, "ranker")]),
                seed=104,
                shoppers=args.aa_shoppers * 2,
                duration=args.max_seconds,
            ),
        ]
    )
    for i in range(args.aa_first, args.aa_first + args.aa_runs):
        out.append(
            Phase(
                experiment(f"aa_{i:02d}", [("control", 50, "ranker"), ("twin", 50, "ranker")]),
                seed=200 + i,
                shoppers=args.aa_shoppers,
                duration=args.max_seconds,
            )
        )
    return out


def first_lasting(ns: list[int], ps: list[float], alpha: float = 0.05) -> int | None:
    """The smallest n from which every later p is below alpha (None: never)."""
    needed = None
    for n, p in zip(ns, ps, strict=True):
        if p < alpha:
            if needed is None:
                needed = n
        else:
            needed = None
    return needed


def ab_visitors_needed(warehouse: Path, name: str, step: int) -> tuple[int, int | None, float]:
    """Visitors of an A/B test (both arms) before its CTR difference held at p < 0.05."""
    _, rows = query(
        warehouse,
        f"""select variant, n_attributed_views, n_impressed_items
            from intermediate.int_experiment_visitors
            where experiment = '{name}' and n_variants = 1""",
    )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))
    variant = np.array([r[0] for r in rows])[order]
    views = np.array([r[1] for r in rows], dtype=float)[order]
    items = np.array([r[2] for r in rows], dtype=float)[order]
    ns, ps = [], []
    for n in [*range(step, len(rows), step), len(rows)]:
        z = _delta_z(variant[:n], views[:n], items[:n])
        ns.append(n)
        ps.append(2 * stats.norm.sf(abs(z)))
    return len(rows), first_lasting(ns, ps), ps[-1] if ps else math.nan


def _delta_z(variant: np.ndarray, views: np.ndarray, items: np.ndarray) -> float:
    """CTR (ratio of sums) difference of the two arms over its delta-method standard error."""
    est = []
    for arm in sorted(set(variant)):
        x, y = views[variant == arm], items[variant == arm]
        if len(x) < 2:
            return 0.0
        r = x.sum() / y.sum()
        var = (np.var(x, ddof=1) - 2 * r * np.cov(x, y)[0, 1] + r * r * np.var(y, ddof=1)) / (
            len(x) * y.mean() ** 2
        )
        est.append((r, var))
    (r0, v0), (r1, v1) = est[:2]
    return (r1 - r0) / math.sqrt(v0 + v1) if v0 + v1 > 0 else 0.0


def il_visitors_needed(warehouse: Path, name: str, step: int) -> tuple[int, int | None, float]:
    """Visitors of an interleaving test before its sign test held at p < 0.05."""
    _, rows = query(
        warehouse,
        f"""select visitor_id,
                   sum(case when is_viewed and team = 'ranker' then 1 else 0 end) as a,
                   sum(case when is_viewed and team = 'als' then 1 else 0 end) as b
            from recommendation_outcomes where experiment = '{name}' and visitor_id is not null
            group by visitor_id""",
    )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))
    a = np.array([r[1] for r in rows])[order]
    b = np.array([r[2] for r in rows])[order]
    ns, ps = [], []
    for n in [*range(step, len(rows), step), len(rows)]:
        wins, losses = int((a[:n] > b[:n]).sum()), int((a[:n] < b[:n]).sum())
        ns.append(n)
        ps.append(stats.binomtest(wins, wins + losses).pvalue if wins + losses else 1.0)
    return len(rows), first_lasting(ns, ps), ps[-1] if ps else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("data/bench/loop"))
    parser.add_argument("--scale", default="small")
    parser.add_argument("--ab-shoppers", type=int, default=8_000)
    parser.add_argument("--il-shoppers", type=int, default=4_000)
    parser.add_argument("--aa-shoppers", type=int, default=1_500)
    parser.add_argument("--aa-runs", type=int, default=20)
    parser.add_argument(
        "--aa-first", type=int, default=0, help="number of the first A/A test (and its seed)"
    )
    parser.add_argument("--aa-only", action="store_true", help="only the A/A tests")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="per phase")
    parser.add_argument("--fresh", action="store_true", help="start from an empty work dir")
    parser.add_argument(
        "--analyse-only",
        action="store_true",
        help="read the results of an earlier run's warehouse (no traffic, no build)",
    )
    args = parser.parse_args()
    if args.analyse_only:
        analyse(args.work_dir.resolve() / "warehouse.duckdb")
        return
    if args.fresh and args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    if (args.work_dir / "lake" / "landing").exists() or (
        args.work_dir / "lake" / "raw" / "impressions"
    ).exists():
        # a second run on the same lake would mix its traffic with the first's
        print("the work dir holds an earlier loop's traffic: pass --fresh", file=sys.stderr)
        sys.exit(2)
    t0 = time.perf_counter()
    plan = phases(args)
    # the analysis gets each experiment's declared weights, as `recsys build` takes them from
    # the experiments file; srm_60_40 is left out on purpose: expected 50/50, served 60/40
    weights: dict[str, dict[str, float]] = {}
    for phase in plan:
        for e in json.loads(phase.experiments)["experiments"]:
            if e["name"] != "srm_60_40":
                weights[e["name"]] = {v["name"]: v["weight"] for v in e["variants"]}
    warehouse = run_loop(
        args.work_dir,
        plan,
        scale=args.scale,
        quiet_simulator=True,
        dbt_vars={"experiment_weights": weights},
    )
    print(f"\n[bench-loop] {time.perf_counter() - t0:.0f}s in all\n")
    analyse(warehouse)


def analyse(warehouse: Path) -> None:
    """The tables and figures of the module doc, from a built warehouse."""

    def show(title: str, sql: str) -> list[tuple]:
        names, rows = query(warehouse, sql)
        print(f"{title}\n{table(names, rows)}\n")
        return rows

    show(
        "A/B: ranker lists against popularity, and against ALS order",
        """select experiment, variant, metric, n_visitors, estimate, absolute_lift,
                  absolute_lift_ci_low, absolute_lift_ci_high, relative_lift, p_value,
                  sample_ratio_p_value, has_sample_ratio_mismatch
           from experiment_results where experiment in ('ab_popularity', 'ab_als')
           order by experiment, metric, is_control desc""",
    )
    show(
        "A/A: share of p < 0.05 over the A/A experiments, per metric",
        """select metric, count(*) as n_experiments,
                  sum(case when p_value < 0.05 then 1 else 0 end) as n_below_005,
                  avg(case when p_value < 0.05 then 1.0 else 0.0 end) as share_below_005,
                  sum(case when has_sample_ratio_mismatch then 1 else 0 end) as n_srm_flags,
                  avg(n_visitors) as visitors_per_arm
           from experiment_results where experiment like 'aa\\_%' escape '\\' and not is_control
           group by metric order by metric""",
    )
    # per metric: the metrics of one experiment are correlated (conversion and revenue most),
    # so their p-values are not pooled
    _, rows = query(
        warehouse,
        """select metric, p_value from experiment_results
           where experiment like 'aa\\_%' escape '\\' and not is_control""",
    )
    for metric in sorted({m for m, _ in rows}):
        ps = np.array([p for m, p in rows if m == metric], dtype=float)
        below = int((ps < 0.05).sum())
        ci = stats.binomtest(below, len(ps)).proportion_ci(0.95)
        uniform = stats.kstest(ps, "uniform").pvalue
        print(
            f"A/A {metric}: {below} of {len(ps)} p-values below 0.05 = {below / len(ps):.3f} "
            f"(95% interval {ci.low:.3f}-{ci.high:.3f}: 0.05 "
            f"{'inside' if ci.low <= 0.05 <= ci.high else 'OUTSIDE'}); p-values against the "
            f"uniform distribution (KS): p = {uniform:.3f}"
        )
    print()
    show(
        "SRM: 60/40 split analysed as 50/50, and the A/B tests",
        """select distinct experiment, sample_ratio_chi_squared, sample_ratio_p_value,
                  has_sample_ratio_mismatch
           from experiment_results
           where experiment in ('srm_60_40', 'ab_popularity', 'ab_als', 'il_als')
           order by experiment""",
    )
    show(
        "interleaving: ranker against ALS order",
        """select experiment, variant, team_a, team_b, n_visitors, n_visitors_with_views,
                  n_prefer_a, n_prefer_b, n_ties, share_prefer_a, sign_test_p_value
           from interleaving_results where experiment = 'il_als'""",
    )
    _, ab_rows = query(warehouse, "select * from experiment_results where experiment = 'ab_als'")
    if not ab_rows:
        return  # an A/A-only run
    ab_n, ab_needed, ab_p = ab_visitors_needed(warehouse, "ab_als", 100)
    il_n, il_needed, il_p = il_visitors_needed(warehouse, "il_als", 100)
    print(
        f"visitors before the verdict held (p < 0.05 from then on, steps of 100):\n"
        f"  A/B ranker vs ALS (CTR): {ab_needed} of {ab_n} (final p {ab_p:.2g})\n"
        f"  interleaving ranker vs ALS: {il_needed} of {il_n} (final p {il_p:.2g})"
    )


if __name__ == "__main__":
    main()
