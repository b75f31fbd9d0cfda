"""leadflow-exporter run | check | demo | simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from leadflow_exporter import __version__
from leadflow_exporter.config import (
    DEFAULT_PORT,
    ApiConfig,
    Config,
    ConfigError,
    LoggingConfig,
    PollConfig,
    Secret,
    ServerConfig,
    StateConfig,
    load_config,
    split_listen,
)

DEFAULT_CONFIG = "leadflow-exporter.yaml"
SIMULATOR_PORT = DEFAULT_PORT + 1


def _listen(value: str) -> tuple[str, int]:
    try:
        return split_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leadflow-exporter",
        description="Prometheus exporter for DialogTech LeadFlow pay-per-call history.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the exporter daemon")
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="YAML config file")

    check = commands.add_parser("check", help="validate a config file and exit 0 or 1")
    check.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="YAML config file")

    demo = commands.add_parser(
        "demo", help="run the exporter against the built-in LeadFlow simulator (no keys)"
    )
    demo.add_argument(
        "--listen",
        type=_listen,
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help="exporter address (default %(default)s)",
    )
    demo.add_argument(
        "--simulator-listen",
        type=_listen,
        default=f"127.0.0.1:{SIMULATOR_PORT}",
        help="simulator address (default %(default)s)",
    )
    demo.add_argument("--scenario", default="steady", help="simulator scenario")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--volume", type=float, default=20.0, help="traffic multiplier (default %(default)s)"
    )
    demo.add_argument(
        "--backfill-minutes",
        type=float,
        default=60.0,
        help="start as if the exporter had last polled this long ago (default %(default)s)",
    )
    demo.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="poll interval in seconds (default %(default)s)",
    )

    simulate = commands.add_parser("simulate", help="serve the fake LeadFlow API alone")
    simulate.add_argument("--listen", type=_listen, default=f"127.0.0.1:{SIMULATOR_PORT}")
    simulate.add_argument("--scenario", default="steady")
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--volume", type=float, default=1.0)
    simulate.add_argument(
        "--rate-limit", type=int, default=100, help="requests per minute before 429 (0: no limit)"
    )
    simulate.add_argument(
        "--slow-seconds", type=float, default=3.0, help="response delay of the 'slow' scenario"
    )
    simulate.add_argument(
        "--history-hours",
        type=float,
        default=24.0,
        help="hours of traffic that exist before the start",
    )
    simulate.add_argument(
        "--buyers-always-open",
        action="store_true",
        help="buyers keep no hours: the daytime call mix at any hour",
    )
    return parser


def _print_problems(exc: ConfigError) -> None:
    _print_problem_list(exc.source or "config", exc.problems)


def _print_problem_list(where: str, problems: Sequence[str]) -> None:
    print(f"{where}: {len(problems)} problem(s)", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    from leadflow_exporter.webconfig import WebConfigError, load_web_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    if config.server.web_config_file:
        try:
            load_web_config(config.server.web_config_file)
        except WebConfigError as exc:
            _print_web_problems(exc)
            return 1
    print(f"{args.config}: config OK")
    return 0


def _print_web_problems(exc: Exception) -> None:
    problems = getattr(exc, "problems", None) or [str(exc)]
    source = getattr(exc, "source", None) or "web config"
    _print_problem_list(f"server.web_config_file: {source}", problems)


def cmd_run(args: argparse.Namespace) -> int:
    from leadflow_exporter.daemon import run_daemon
    from leadflow_exporter.logsetup import configure_logging
    from leadflow_exporter.state import StateError
    from leadflow_exporter.webconfig import WebConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    configure_logging(config.logging.level, config.logging.format)
    try:
        return asyncio.run(run_daemon(config, Path(args.config)))
    except WebConfigError as exc:
        _print_web_problems(exc)
        return 1
    except StateError as exc:
        print(f"state.path: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is not None:
            # A failed bind names no file: this came from elsewhere, and blaming the listen
            # address for it would send the reader to the wrong key.
            print(f"cannot start: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(
            f"server.listen: cannot listen on {config.server.listen}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1


async def _serve_simulator(args: argparse.Namespace) -> int:
    from leadflow_exporter.simulator import start_simulator

    host, port = args.listen
    sim = await start_simulator(
        host,
        port,
        seed=args.seed,
        scenario=args.scenario,
        volume=args.volume,
        rate_limit_per_minute=args.rate_limit,
        slow_seconds=args.slow_seconds,
        history_hours=args.history_hours,
        buyers_always_open=args.buyers_always_open,
    )
    print(
        f"LeadFlow simulator on {sim.url} (scenario {args.scenario}, seed {args.seed})", flush=True
    )
    print(f"  API:        {sim.url}/report/v1/leadflow/v2/history", flush=True)
    print(f"  controls:   {sim.url}/_sim/scenario  {sim.url}/_sim/truth", flush=True)
    await _wait_for_signal()
    await sim.close()
    return 0


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def cmd_simulate(args: argparse.Namespace) -> int:
    from leadflow_exporter.simulator import SCENARIOS

    if args.scenario not in SCENARIOS:
        print(
            f"--scenario: unknown {args.scenario!r}; one of {', '.join(SCENARIOS)}", file=sys.stderr
        )
        return 2
    return asyncio.run(_serve_simulator(args))


def demo_config(simulator_url: str, listen: tuple[str, int], interval: float) -> Config:
    from leadflow_exporter.simulator import DEFAULT_CREDENTIALS

    return Config(
        api=ApiConfig(
            base_url=f"{simulator_url}/report/v1/leadflow/v2/history",
            access_key=Secret(DEFAULT_CREDENTIALS.access_key),
            secret_access_key=Secret(DEFAULT_CREDENTIALS.secret_access_key),
            rate_limit_key=Secret(DEFAULT_CREDENTIALS.rate_limit_key),
            timeout_seconds=10.0,
        ),
        poll=PollConfig(interval_seconds=interval),
        state=StateConfig(path=""),
        server=ServerConfig(listen=f"{listen[0]}:{listen[1]}"),
        logging=LoggingConfig(level="info", format="console"),
    )


async def _demo(args: argparse.Namespace) -> int:
    from leadflow_exporter.daemon import Daemon
    from leadflow_exporter.logsetup import configure_logging
    from leadflow_exporter.simulator import start_simulator

    configure_logging("info", "console")
    sim_host, sim_port = args.simulator_listen
    sim = await start_simulator(
        sim_host, sim_port, seed=args.seed, scenario=args.scenario, volume=args.volume
    )
    daemon = Daemon(demo_config(sim.url, args.listen, args.interval))
    if args.backfill_minutes > 0:
        # The catch-up after a restart, not a special case: the first poll counts what
        # finished since this watermark, so the demo shows calls at once.
        daemon.ledger.watermark = daemon.clock.now() - args.backfill_minutes * 60
    try:
        await daemon.start()
        host = args.listen[0] if args.listen[0] not in ("0.0.0.0", "::") else "127.0.0.1"
        base = f"http://{host}:{daemon.port}"
        print(
            "\nLeadFlow exporter demo: the exporter polls the built-in simulator.\n"
            f"  metrics:        {base}/metrics\n"
            f"  landing page:   {base}/\n"
            f"  readiness:      {base}/-/ready\n"
            f"  simulator:      {sim.url}/_sim/scenario  (POST name=no-buyer-spike, ...)\n"
            f"  ground truth:   {sim.url}/_sim/truth\n"
            "Ctrl-C stops both.\n",
            flush=True,
        )
        await _wait_for_signal()
    finally:
        await daemon.stop()
        await sim.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_demo(args))
    except OSError as exc:
        print(f"demo: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"run": cmd_run, "check": cmd_check, "demo": cmd_demo, "simulate": cmd_simulate}
    if args.command is None:
        parser.print_help()
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return commands[args.command](args)
    return 130
