"""The `recsys` command: one entry point for every stage (see DESIGN.md, "Command line")."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.settings import DEFAULT_SEARCH_BUDGET_S, SEED, Settings, get_settings

if TYPE_CHECKING:
    from recsys.ingest import TableReport

# implicit (ALS) wants one BLAS thread; it must be set before numpy is first imported
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _say(message: str) -> None:
    print(message, flush=True)


def _timed(name: str, step: Callable[[], object]) -> object:
    t0 = time.perf_counter()
    result = step()
    _say(f"[{name}] done in {time.perf_counter() - t0:.1f}s")
    return result


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from recsys.generate import SCALES, generate, scaled

    try:  # a factor that leaves too few visitors, items or categories for this scale
        scaled(SCALES[args.scale], args.scale_factor)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    counts = _timed(
        "generate",
        lambda: generate(
            args.scale,
            args.seed,
            out,
            progress=lambda m: _say(f"  {m}"),
            revisits=args.revisits,
            scale_factor=args.scale_factor,
        ),
    )
    _say(f"wrote RetailRocket-layout CSVs to {out}: {json.dumps(counts)}")
    return 0


def run_ingest(raw_dir: Path, settings: Settings) -> list[TableReport]:
    from recsys.ingest import ingest_folder

    return ingest_folder(raw_dir, settings, say=_say)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    run_ingest(Path(args.raw_dir), settings)
    return 0


def run_gc(settings: Settings, grace_seconds: float) -> int:
    from recsys.gc import collect
    from recsys.lake import Lake

    done = collect(Lake.from_settings(settings), grace_seconds=grace_seconds)
    for kind, items in (
        ("snapshot folders without a manifest", done.snapshot_folders),
        ("temporary files", done.temporary_files),
        ("scratch folders", done.scratch_folders),
    ):
        if items:
            _say(f"  removed {len(items)} {kind}: {', '.join(items[:5])}")
    return done.count


def cmd_gc(args: argparse.Namespace, settings: Settings) -> int:
    count = _timed("gc", lambda: run_gc(settings, args.grace_seconds))
    _say(f"removed {count} leftovers of stopped runs (older than {args.grace_seconds:g} s)")
    return 0


def _dbt_vars(text: str | None) -> dict[str, object] | None:
    """`--vars` as dbt takes it (a YAML or JSON mapping); an error naming the problem."""
    if not text:
        return None
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SystemExit(f"error: --vars is not YAML or JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise SystemExit("error: --vars must be a mapping, e.g. '{experiment_weights: {}}'")
    return value


def _dbt_target(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", text):
        raise argparse.ArgumentTypeError(f"not a dbt target name: {text[:70]!r}")
    return text


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    from recsys.warehouse import build, summary

    if args.target:
        settings = settings.model_copy(update={"recsys_dbt_target": args.target})
    extra = _dbt_vars(args.vars)
    _timed(
        "build",
        lambda: build(settings, cutoff_at=args.cutoff_at, select=args.select, extra_vars=extra),
    )
    if not args.select and settings.recsys_dbt_target in (None, "local", "s3"):
        _say(summary(settings))  # the DuckDB warehouse's tables
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from models_ml import pipeline

    _timed("train", lambda: pipeline.train(settings, say=_say, search_budget_s=args.search_budget))
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from models_ml import pipeline

    _timed("evaluate", lambda: pipeline.evaluate(settings, say=_say))
    _say(f"wrote {settings.metrics_path} and report.md")
    return 0


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from models_ml import pipeline

    _timed("publish", lambda: pipeline.publish_snapshot(settings, say=_say, force=args.force))
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from models_ml import pipeline
    from recsys.generate import generate
    from recsys.warehouse import build, summary

    t0 = time.perf_counter()
    demo = args.scale if args.revisits == "retailrocket" else f"{args.scale}-{args.revisits}"
    raw_dir = Path(args.raw_dir) if args.raw_dir else settings.data_dir / "demo" / demo
    if not args.raw_dir:
        if (raw_dir / "events.csv").exists():
            _say(f"demo data already in {raw_dir} (delete it to generate again)")
        else:
            _say(f"no --raw-dir given: generating {args.scale} demo data in {raw_dir}")
            _timed(
                "generate",
                lambda: generate(
                    args.scale,
                    args.seed,
                    raw_dir,
                    progress=lambda m: _say(f"  {m}"),
                    revisits=args.revisits,
                ),
            )
    if run_gc(settings, 3600.0):  # the next run cleans up after a killed one
        _say("  (leftovers of stopped runs older than an hour, removed: see `recsys gc`)")
    run_ingest(raw_dir, settings)
    if args.skip_ml:
        _timed("build", lambda: build(settings, cutoff_at=args.cutoff_at, echo=False))
    else:
        # train and evaluate build the features as of their windows, and publish as of the
        # latest event: the warehouse ends as a plain `recsys build` would leave it
        _timed(
            "train", lambda: pipeline.train(settings, say=_say, search_budget_s=args.search_budget)
        )
        _timed("evaluate", lambda: pipeline.evaluate(settings, say=_say))
        _timed("publish", lambda: pipeline.publish_snapshot(settings, say=_say, force=args.force))
    _say(summary(settings))
    _say(f"pipeline finished in {time.perf_counter() - t0:.1f}s")
    if not args.skip_ml:
        _say(try_it(settings))
    return 0


def try_it(settings: Settings) -> str:
    """How to ask the published snapshot for recommendations, with a visitor it knows."""
    from recsys.lake import connect_duckdb

    built = settings.snapshot_build_path
    visitor = None
    if built.exists():
        with connect_duckdb(built, read_only=True) as con:
            row = con.execute("select min(visitor_id) from recommendations").fetchone()
            visitor = row[0] if row else None
    example = visitor if visitor is not None else "VISITOR_ID"
    return (
        "\nserve it:  uv run recsys serve          (http://127.0.0.1:8000/docs)\n"
        f"then:      curl 'http://127.0.0.1:8000/v1/recommendations/{example}?k=5'\n"
        "           curl -X POST http://127.0.0.1:8000/v1/recommendations "
        "-H 'Content-Type: application/json' -d '{\"session_item_ids\": [], \"k\": 5}'"
    )


def serve_log_config(level: str) -> dict[str, object]:
    """uvicorn's logging, with the service's own `api` loggers on the same handler."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, object] = copy.deepcopy(LOGGING_CONFIG)
    loggers = config["loggers"]
    assert isinstance(loggers, dict)
    loggers["api"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.middleware import is_loopback
    from api.server import uvicorn_options

    allow_no_auth = args.allow_no_auth or settings.recsys_api_allow_no_auth
    if not settings.api_keys and not is_loopback(args.host) and not allow_no_auth:
        # the app refuses such requests itself (403), however it is started; this says it
        # before anything listens
        print(
            f"error: refusing to listen on {args.host} without RECSYS_API_KEYS: anyone who can "
            "reach it could use the API. Set RECSYS_API_KEYS, or pass --allow-no-auth "
            "(RECSYS_API_ALLOW_NO_AUTH=true) if something in front of the service checks "
            "callers.",
            file=sys.stderr,
        )
        return 2
    if args.allow_no_auth:  # the workers read their settings from the environment
        os.environ["RECSYS_API_ALLOW_NO_AUTH"] = "true"
    auth = "API keys required on /v1" if settings.api_keys else "no API keys (local only)"
    _say(
        f"serving on http://{args.host}:{args.port} with {args.workers} worker(s), "
        f"snapshots from {settings.lake_uri}/snapshots; {auth}"
    )
    shared_metrics = None
    if args.workers > 1:  # one scrape of /metrics covers every worker (api/metrics.py)
        from api.metrics import MULTIPROCESS_DIR, fresh_multiprocess_dir

        shared_metrics = fresh_multiprocess_dir(settings.data_dir / "api-metrics")
        os.environ[MULTIPROCESS_DIR] = str(shared_metrics)
    try:
        uvicorn.run(
            "api.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            log_config=serve_log_config(args.log_level),
            access_log=args.access_log,
            # the limits on every connection: header size and time, body time, concurrency
            **uvicorn_options(settings),
        )
    finally:
        if shared_metrics is not None:
            os.environ.pop(MULTIPROCESS_DIR, None)
            shutil.rmtree(shared_metrics, ignore_errors=True)
    return 0


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "serve":
        from monitoring.service import serve

        _say(
            f"monitoring service on http://{args.host}:{args.port}, exports from "
            f"{settings.lake_uri}/monitoring"
        )
        serve(settings, host=args.host, port=args.port)
        return 0
    from monitoring.run import monitor

    result = monitor(settings, ingest=not args.no_ingest, say=_say)
    return 3 if args.exit_code and result.decision.retrain else 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from recsys.generate import LATENT_FILE
    from recsys.simulate import Api, Behaviour, LatentError, SimulateError, load_shop, run

    latent = (
        Path(args.latent) if args.latent else settings.data_dir / "demo" / args.scale / LATENT_FILE
    )
    api_key = args.api_key or (settings.api_keys[0] if settings.api_keys else None)
    try:
        behaviour = Behaviour(
            boost=args.boost,
            new_share=args.new_share,
            sessions=args.sessions,
            max_sessions=args.max_sessions,
            k=args.k,
            session_requests=args.session_requests,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bounds = [f"{args.duration:g} s"]
    if args.shoppers is not None:
        bounds.append(f"{args.shoppers:,} shoppers")
    if args.rate:
        bounds.append(f"{args.rate:g} shoppers/s")
    try:
        shop = load_shop(latent)
        _say(
            f"simulating shoppers of {latent} ({len(shop.visitor_id):,} visitors, "
            f"{len(shop.item_id):,} items) against {args.api_url}: at most {', '.join(bounds)}, "
            f"{args.concurrency} threads, boost {behaviour.boost:g}, seed {args.seed}"
        )
        api = Api(args.api_url, api_key)
        api.check()
        with tqdm(total=args.shoppers, unit="shopper", disable=args.no_progress) as bar:
            report = run(
                shop,
                api,
                seed=args.seed,
                behaviour=behaviour,
                duration=args.duration,
                shoppers=args.shoppers,
                rate=args.rate,
                concurrency=args.concurrency,
                progress=bar.update,
            )
    except (LatentError, SimulateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        _say(f"  {line}")
    _say(f"[simulate] done in {report.seconds:.1f}s")
    return 0


def cmd_loop(args: argparse.Namespace, settings: Settings) -> int:
    from recsys import loop

    experiments = Path(args.experiments) if args.experiments else loop.DEMO_EXPERIMENTS
    if not experiments.is_file():
        print(f"error: no experiments file at {experiments}", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir) if args.data_dir else settings.data_dir / "loop"
    phase = loop.Phase(
        experiments.read_text(), seed=args.seed, shoppers=args.shoppers, duration=args.duration
    )
    warehouse = loop.run_loop(data_dir, [phase], scale=args.scale, say=_say)
    for title, sql in loop.REPORTS:
        names, rows = loop.query(warehouse, sql)
        _say(f"\n{title}\n{loop.table(names, rows)}")
    _say(f"\nthe warehouse: {warehouse} (see README, 'The closed loop', for the SQL)")
    return 0


def _scale_factor(text: str) -> float:
    """argparse's type for --scale-factor: a float in (0, MAX_SCALE_FACTOR]."""
    from recsys.generate import check_scale_factor

    try:
        return check_scale_factor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


REVISITS_HELP = (
    "how visitors come back to items in generated data: as in RetailRocket, or never "
    "(each visitor meets each item once)"
)


def build_parser() -> argparse.ArgumentParser:
    from recsys.generate import MAX_SCALE_FACTOR, REVISITS

    parser = argparse.ArgumentParser(
        prog="recsys", description="Warehouse-first recommendations for online shops."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write synthetic RetailRocket-layout CSVs")
    p.add_argument("--scale", choices=["tiny", "small", "full"], default="small")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", required=True, help="folder for the CSVs")
    p.add_argument("--revisits", choices=REVISITS, default="retailrocket", help=REVISITS_HELP)
    p.add_argument(
        "--scale-factor",
        type=_scale_factor,
        default=1.0,
        help="multiply the scale's visitors, items and categories (events grow with them): "
        f"a number in (0, {MAX_SCALE_FACTOR:g}], default 1",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("ingest", help="validate CSVs and write typed Parquet to the lake")
    p.add_argument("--raw-dir", required=True, help="folder with events.csv and friends")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("build", help="dbt build with the project's profile and vars")
    p.add_argument("--cutoff-at", help="features as of this time (default: the latest event)")
    p.add_argument("--select", help="a dbt selection, e.g. 'marts'")
    p.add_argument(
        "--target",
        type=_dbt_target,
        help="the dbt profile's target (default: local, or s3 for an s3:// lake; "
        "RECSYS_DBT_TARGET): spark builds the same models on a local Spark",
    )
    p.add_argument(
        "--vars",
        help="more dbt vars, YAML or JSON, e.g. "
        "'{experiment_weights: {ab: {control: 60, popular: 40}}}'",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "loop",
        help="the closed loop on this machine: serve, simulate shoppers, ingest, build, results",
    )
    p.add_argument(
        "--experiments",
        help="the experiments file for the run (default: recsys/loop_experiments.yaml, "
        "ranker against popularity, and ranker against ALS interleaved)",
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of simulated traffic")
    p.add_argument("--shoppers", type=int, help="stop after this many shoppers")
    p.add_argument("--seed", type=int, default=1, help="the simulator's seed")
    p.add_argument(
        "--data-dir",
        help="the loop's own data folder (default: $RECSYS_DATA_DIR/loop); its lake gets "
        "events stamped today, so it is kept apart from the demo's",
    )
    p.add_argument("--scale", choices=["tiny", "small"], default="small")
    p.set_defaults(func=cmd_loop)

    p = sub.add_parser("train", help="ALS candidates, ranking features, CatBoost ranker")
    p.add_argument(
        "--search-budget",
        type=float,
        default=DEFAULT_SEARCH_BUDGET_S,
        help=f"seconds of ranker search (default {DEFAULT_SEARCH_BUDGET_S:g})",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="reports/metrics.json and a report with plots")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("publish", help="write a snapshot if it passes the quality gate")
    p.add_argument("--force", action="store_true", help="publish even if the gate refuses")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("run", help="every stage: demo data if needed, ingest ... publish")
    p.add_argument("--raw-dir", help="CSV folder (default: generate demo data)")
    p.add_argument("--scale", choices=["tiny", "small", "full"], default="small")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--revisits", choices=REVISITS, default="retailrocket", help=REVISITS_HELP)
    p.add_argument("--cutoff-at", help="with --skip-ml: features as of this time")
    p.add_argument(
        "--search-budget",
        type=float,
        default=DEFAULT_SEARCH_BUDGET_S,
        help=f"seconds of ranker search (default {DEFAULT_SEARCH_BUDGET_S:g})",
    )
    p.add_argument("--force", action="store_true", help="publish even if the gate refuses")
    p.add_argument("--skip-ml", action="store_true", help="stop after the warehouse build")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("gc", help="remove what killed runs left in the lake and temp folder")
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=3600.0,
        help="only what is older (a running job may still be writing newer things)",
    )
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("serve", help="start the API on the lake's latest snapshot")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers", type=int, default=1, help="processes; each loads its own snapshot copy"
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: the metrics count them, and a log line per "
        "request costs throughput)",
    )
    p.add_argument(
        "--allow-no-auth",
        action="store_true",
        help="listen on a non-local address without RECSYS_API_KEYS",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "monitor",
        help="drift, live performance, freshness, the retraining decision; `monitor serve` "
        "starts the monitoring service",
    )
    p.add_argument("action", nargs="?", choices=["serve"], help="start the monitoring service")
    p.add_argument("--host", default="127.0.0.1", help="serve: address to listen on")
    p.add_argument("--port", type=int, default=8001, help="serve: port (default 8001)")
    p.add_argument(
        "--no-ingest",
        action="store_true",
        help="leave the events and impressions the API landed for the next ingest",
    )
    p.add_argument(
        "--exit-code",
        action="store_true",
        help="exit with 3 when the policy decides to retrain (for schedulers other than Airflow)",
    )
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser(
        "simulate", help="simulated shoppers act on the running API's recommendations"
    )
    p.add_argument("--api-url", default="http://127.0.0.1:8000", help="the running API")
    p.add_argument("--api-key", help="X-API-Key (default: the first of RECSYS_API_KEYS)")
    p.add_argument(
        "--latent",
        help="the generator's latent.npz (default: the demo data's, "
        "$RECSYS_DATA_DIR/demo/<scale>/latent.npz)",
    )
    p.add_argument(
        "--scale", choices=["tiny", "small", "full"], default="small", help="the demo data's"
    )
    p.add_argument("--seed", type=int, default=SEED, help="same seed, same shoppers")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--shoppers", type=int, help="stop after this many shoppers")
    p.add_argument(
        "--rate", type=float, default=0.0, help="shoppers started per second (0: as fast as can be)"
    )
    p.add_argument("--concurrency", type=int, default=4, help="threads (default 4)")
    p.add_argument(
        "--boost",
        type=float,
        default=4.0,
        help="a shown item at rank r gets 1 + boost/log2(r+1) times its organic attention "
        "(default 4)",
    )
    p.add_argument(
        "--new-share", type=float, default=0.2, help="share of new visitors (default 0.2)"
    )
    p.add_argument(
        "--sessions", type=int, help="sessions per shopper (default: the generator's geometric)"
    )
    p.add_argument("--max-sessions", type=int, default=10, help="cap on the geometric (default 10)")
    p.add_argument("--k", type=int, default=10, help="list length asked for (default 10)")
    p.add_argument(
        "--session-requests",
        action="store_true",
        help="after each view, ask again (POST /v1/recommendations with the session's items)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from recsys.errors import GateRefused, NotEnoughData, NotReady
    from recsys.ingest import IncompleteIngest, IngestError, NoEvents
    from recsys.lake import LakeError
    from recsys.warehouse import BuildError, IncompleteBuild

    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except (ValidationError, SettingsError) as exc:
        print(f"error: settings: {exc}", file=sys.stderr)  # never a value: hide_input_in_errors
        return 2
    try:
        return int(args.func(args, settings))
    except (
        IngestError,
        IncompleteIngest,
        LakeError,
        BuildError,
        IncompleteBuild,
        GateRefused,
        NotEnoughData,
        NoEvents,
        NotReady,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
