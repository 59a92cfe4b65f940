"""`python -m bench run --load L2` (or `--all`): see bench/README.md."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from bench.run import LOADS, Load, Options, execute

HERE = Path(__file__).resolve().parent


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmark")
    run.add_argument("--load", action="append", choices=sorted(LOADS), help="L1, L2 or L3")
    run.add_argument("--all", action="store_true", help="L1, L2 and L3")
    run.add_argument("--custom", metavar="C,U,R[,W]", help="consoles,customers,rate[,web]")
    run.add_argument("--smoke", action="store_true", help="a few seconds at a tiny load")
    run.add_argument("--duration", type=float, default=60, help="measured seconds per load")
    run.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    run.add_argument("--layer", choices=["core", "pubsub"], default=None)
    run.add_argument("--worker-concurrency", type=int, default=4)
    run.add_argument(
        "--worker-pool",
        choices=["prefork", "threads"],
        default=None,
        help="the worker's pool (default: the Procfile's)",
    )
    run.add_argument(
        "--history",
        type=int,
        default=20000,
        help="closed conversations (ten messages each) in the database before the loads",
    )
    run.add_argument("--idle-sockets", type=int, default=1000)
    run.add_argument("--snapshot-open", type=int, action="append", default=None)
    run.add_argument("--races", type=int, default=3)
    run.add_argument("--race-agents", type=int, default=50)
    run.add_argument("--feedbacks", type=int, default=None)
    run.add_argument("--no-bare", action="store_true", help="skip the bare Channels reference")
    run.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    run.add_argument("--db-prefix", default="handoff_bench")
    run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the product's processes (experiments)",
    )
    run.add_argument(
        "--profile", action="store_true", help="py-spy the web process(es) and the worker"
    )
    run.add_argument(
        "--quiet-below",
        type=float,
        default=None,
        metavar="LOAD",
        help="before each load, wait (up to --quiet-wait s) for loadavg(1 min) <= LOAD",
    )
    run.add_argument("--quiet-wait", type=float, default=1800)
    run.add_argument("--json", type=Path, default=None, help="where to write the JSON report")
    run.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    loads = [LOADS[name] for name in (args.load or [])]
    if args.all:
        loads = [LOADS["L1"], LOADS["L2"], LOADS["L3"]]
    if args.custom:
        parts = args.custom.split(",")
        web = int(parts[3]) if len(parts) > 3 else 1
        loads.append(Load("custom", int(parts[0]), int(parts[1]), float(parts[2]), web))
    options = Options(
        loads=loads,
        duration=args.duration,
        warmup=args.warmup,
        layer=args.layer,
        worker_concurrency=args.worker_concurrency,
        worker_pool=args.worker_pool,
        idle_sockets=args.idle_sockets,
        history=args.history,
        snapshot_open=tuple(args.snapshot_open or (200, 2000)),
        races=args.races,
        race_agents=args.race_agents,
        feedbacks=args.feedbacks,
        bare=not args.no_bare,
        pg_url=args.pg_url,
        db_prefix=args.db_prefix,
        json_path=args.json,
        log_dir=args.log_dir,
        server_env=dict(item.split("=", 1) for item in args.env),
        profile=args.profile,
        quiet_below=args.quiet_below,
        quiet_wait=args.quiet_wait,
    )
    if args.smoke:
        # The same code path at a size that runs in seconds (tests/test_bench_smoke.py).
        options.loads = loads or [Load("smoke", 2, 5, 1.0)]
        options.duration = args.duration if args.duration != 60 else 2
        options.warmup = args.warmup or 1.0
        options.idle_sockets = min(args.idle_sockets, 10)
        options.history = min(args.history, 300)
        options.idle_warm = 3
        options.idle_settle = 0.5
        options.snapshot_open = tuple(args.snapshot_open or (20, 60))
        options.snapshot_repeat = 2
        options.races = min(args.races, 1)
        options.race_agents = min(args.race_agents, 5)
        options.feedbacks = 1 if args.feedbacks is None else args.feedbacks
        options.quiet = 0.7
    if not options.loads:
        parser.error("choose --load, --all, --custom or --smoke")
    if options.json_path is None and not args.smoke:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        options.json_path = HERE / "results" / f"{stamp}.json"
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse(sys.argv[1:] if argv is None else argv)

    # SIGTERM unwinds like Ctrl-C, so the run's `finally` stops every server it started.
    def terminate(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        execute(options)
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)


main()
