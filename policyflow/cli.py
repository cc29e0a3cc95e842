"""The ``policyflow`` command.

``scan`` is read-only and never imports Prefect (that import alone costs seconds); ``run-once``
imports the flows only when it runs. A user mistake (bad setting, bad config file, refused
credentials) ends with one line on stderr and exit status 2 (configuration) or 3 (the cluster or
Testkube refused), never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policyflow.domain.errors import ConfigError, PolicyflowError
from policyflow.domain.outcome import EXIT_UNFINISHED, EXIT_USAGE

if TYPE_CHECKING:
    from policyflow.chain.deps import Deps

log = logging.getLogger("policyflow")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML config file with routes (env: POLICYFLOW_CONFIG)")
    common.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (env: POLICYFLOW_KUBECONFIG)")
    common.add_argument("--context", help="kubeconfig context (env: POLICYFLOW_CONTEXT)")
    common.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default WARNING)")
    parser = argparse.ArgumentParser(
        prog="policyflow",
        description="Turn new Kyverno PolicyReport failures into Testkube TestWorkflow runs, and record "
        "each outcome on the report.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    scan = commands.add_parser(
        "scan", parents=[common], help="read-only: the failing results and what was done about each"
    )
    scan.add_argument("--output", "-o", choices=["table", "json"], default="table")
    drift = commands.add_parser(
        "drift", parents=[common],
        help="read-only: the same policy/rule/resource failing in one cluster and not in another",
    )
    drift.add_argument("--output", "-o", choices=["table", "json"], default="table")
    commands.add_parser(
        "run-once", parents=[common],
        help="one detection cycle: run the chain for every new failure, wait, print a table",
        description="Exit status: 0 every chain finished and every test passed; 1 some test did not pass; "
        "2 usage or configuration error; 3 some chain could not finish (the next cycle picks it up).",
    )
    serve = commands.add_parser(
        "serve", parents=[common],
        help="serve the deployments (policy-watch on a schedule, handle-violation, retry-failed-triggers) "
        "from this process, with Prometheus metrics",
    )
    serve.add_argument("--interval", type=float, default=60.0, help="seconds between polls (default 60)")
    serve.add_argument("--retry-interval", type=float, default=None,
                       help="also run retry-failed-triggers every N seconds (default: by hand only)")
    serve.add_argument("--metrics-port", type=int, default=9464, help="Prometheus /metrics port (0: off)")
    serve.add_argument("--limit", type=int, default=None, help="at most N flow runs at once")
    watch = commands.add_parser(
        "watch", parents=[common],
        help="sub-second detection: follow the reports with Kubernetes watches and run each new failure's chain",
    )
    watch.add_argument("--resync", type=float, default=600.0,
                       help="seconds between full detection cycles (default 600; also at start and after 410 Gone)")
    watch.add_argument("--chain-deployment", default=None,
                       help="run violation chains as runs of this deployment (e.g. handle-violation/handle-violation)")
    watch.add_argument("--batch-deployment", default=None,
                       help="run storm batches as runs of this deployment (e.g. handle-violations/handle-violations)")
    commands.add_parser(
        "retry-failed", parents=[common],
        help="run again the chains whose last run failed (what the retry-failed-triggers deployment does)",
    )
    history = commands.add_parser(
        "history", parents=[common], help="recent violations with their runs, executions and outcomes"
    )
    history.add_argument("--limit", type=int, default=50, help="how many runs (default 50)")
    health = commands.add_parser(
        "health", parents=[common],
        help="policy health from the lifecycle journal: open, reopened, time to resolve, pass and flip rates",
    )
    health.add_argument("--since", type=_window, default="30d", metavar="DURATION",
                        help="the window: 90m, 12h, 30d, 2w (default 30d)")
    health.add_argument("--by", choices=["policy", "rule", "namespace", "workflow"], default="rule",
                        help="one row per ... (default rule: policy and rule)")
    health.add_argument("--output", "-o", choices=["table", "json", "markdown"], default="table")
    commands.add_parser(
        "check", parents=[common], help="preflight: what policyflow needs, one line each with ✓/✗ (exit 0/1)"
    )
    demo = commands.add_parser(
        "demo", help="the whole loop against local stand-ins of Kubernetes and Testkube (nothing else needed)"
    )
    demo.add_argument("--once", action="store_true",
                      help="no UI: run --cycles detection cycles in this terminal, print what happened, exit")
    demo.add_argument("--cycles", type=int, default=3, help="with --once: detection cycles to run (default 3)")
    demo.add_argument("--port", type=int, default=4200, help="Prefect UI/API port (default 4200; 0: any free)")
    demo.add_argument("--interval", type=float, default=10.0, help="seconds between polls (default 10)")
    demo.add_argument("--home", default=None, help="Prefect home for the demo server (default: a new temp dir)")
    demo.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _window(text: str) -> timedelta:
    """``30d`` -> 30 days (argparse type: a bad value is one line naming what to write instead)."""
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        if unit not in _UNITS or float(number) <= 0:
            raise ValueError
        return timedelta(seconds=float(number) * _UNITS[unit])
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write a positive number and a unit (s, m, h, d, w), e.g. 30d"
        ) from None


def let_the_story_through(terminal_level: str) -> None:
    """policyflow's own loggers let INFO through to their handlers (Prefect's API handler: the run's
    Logs tab tells its story), whatever the terminal shows."""
    logger = logging.getLogger("policyflow")
    logger.setLevel(min(logging.INFO, logging.getLevelName(terminal_level)))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in ("config", "kubeconfig", "context")}


def _scan_clusters(args: argparse.Namespace) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """Scan every configured cluster (read-only, at once): (cluster, Scan) for those that answered,
    and why, by cluster, for those that did not."""
    from policyflow import settings as settings_module
    from policyflow.scanning import scan_specs

    settings, routing = settings_module.load(_overrides(args))
    return scan_specs(settings, routing, now=datetime.now(UTC))


def _scan(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    scans, down = _scan_clusters(args)
    several = len(scans) + len(down) > 1
    rows = []
    for cluster, scan in scans:
        where = f"cluster {cluster}: " if several else ""
        for kind in scan.skipped_kinds:
            print(f"policyflow: {where}{kind} is not served by this cluster (CRD not installed); skipped",
                  file=sys.stderr)
        for problem in scan.problems:
            print(f"policyflow: {where}{problem}", file=sys.stderr)
        for finding in scan.findings:
            v, planned, record = finding.violation, finding.planned, finding.planned.record
            rows.append({
                "cluster": cluster,
                "violation": v.title,
                "key": v.key,
                "report": str(v.report),
                "severity": v.severity or "",
                "result": v.result.value,
                "action": planned.action.value,
                "status": record.status.value if record else "new",
                "workflow": finding.routed.workflow if finding.routed else "(unrouted)",
                "execution": (record.execution_name or record.execution or "") if record else "",
                "episode": planned.episode,
                "reason": planned.reason,
            })
    for name, why in down.items():
        print(f"policyflow: cluster {name}: down: {why}", file=sys.stderr)
    counters: dict[str, int] = {}
    for _, scan in scans:
        for name, value in scan.counters.items():
            counters[name] = counters.get(name, 0) + value
    if args.output == "json":
        json.dump({"violations": rows, "counters": counters,
                   "clusters": {**{c: "up" for c, _ in scans}, **dict.fromkeys(down, "down")}},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        columns = ["violation", "severity", "status", "action", "workflow", "execution"]
        columns = ["cluster", *columns] if several else columns
        print(tabulate([[r[c] for c in columns] for r in rows], headers=columns, tablefmt="simple")
              if rows else "no failing results")
    return EXIT_UNFINISHED if down else 0


def _drift(args: argparse.Namespace) -> int:
    """``drift``: what fails in some clusters and not in others (only clusters that answered)."""
    from tabulate import tabulate

    from policyflow.domain.drift import drift

    scans, down = _scan_clusters(args)
    for name, why in down.items():
        print(f"policyflow: cluster {name}: down: {why} (left out of the comparison)", file=sys.stderr)
    if len(scans) < 2:
        raise ConfigError("drift compares clusters: configure at least two (clusters: in --config) that answer")
    rows = drift({cluster: [f.violation for f in scan.findings] for cluster, scan in scans})
    if args.output == "json":
        json.dump({"clusters": [c for c, _ in scans], "drift": [d.as_dict() for d in rows]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif rows:
        print(tabulate([[d.policy, d.rule, d.kind, d.namespace or "-", d.name, ", ".join(d.failing),
                         ", ".join(d.not_failing)] for d in rows],
                       headers=["policy", "rule", "kind", "namespace", "name", "failing in", "not failing in"]))
    else:
        print(f"no drift: {', '.join(c for c, _ in scans)} fail the same way")
    return EXIT_UNFINISHED if down else 0


def _prepare_flows(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Deps:
    """Load and check the settings, build this process's dependencies and install them for the flows
    it runs in-process (the caller closes them when its work is done)."""
    from policyflow import settings as settings_module

    settings, routing = settings_module.load({**_overrides(args), **(overrides or {})})
    if routing.is_empty:
        raise ConfigError("no route: set POLICYFLOW_DEFAULT_WORKFLOW or give routes in --config")
    if settings.testkube_url is None:
        raise ConfigError("POLICYFLOW_TESTKUBE_URL is not set: point it at the Testkube API")
    # Prefect's own settings, for Prefect (and a temporary server it may start in a subprocess): no
    # telemetry from such a server (its telemetry job races the run for the SQLite database), and
    # policyflow's log lines ("started execution smoke-nova-3") in the run's logs in the UI.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "policyflow")
    # Imported here: Prefect costs seconds to import, and scan/--help need none of it.
    from policyflow import bootstrap

    _quiet_expected_tracebacks(args.log_level)
    deps = bootstrap.build(settings, routing)
    bootstrap.install(deps)
    return deps


def _quiet_expected_tracebacks(level: str) -> None:
    """A step that fails for a reason policyflow expects (a refused token, an unknown workflow) is one
    line, like every other user mistake; Prefect's engines would log its traceback. ``--log-level
    DEBUG`` keeps them; an unexpected error keeps its traceback whatever the level."""
    if level == "DEBUG":
        return

    def one_line(record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PolicyflowError):
            record.exc_info, record.exc_text = None, None
        return True

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if one_line not in logger.filters:
            logger.addFilter(one_line)


def run_cycle(args: argparse.Namespace, *, retry_failed: bool = False, overrides: dict[str, Any] | None = None) -> int:
    """``run-once`` (or ``retry-failed``): one cycle in this process; its table; its exit status."""
    import asyncio

    deps = _prepare_flows(args, overrides)
    try:
        if retry_failed:
            from flows.retry_failed import retry_failed_triggers

            return _print_outcomes(asyncio.run(retry_failed_triggers()))
        from flows.poll import poll_reports

        return _print_outcomes(asyncio.run(poll_reports()))
    finally:
        # The command is done: its Lease goes (what it left in flight is free at once), and so do
        # the dependencies it installed.
        _uninstall(deps)


def _uninstall(deps: Deps) -> None:
    """Uninstall and close ``deps`` (the next command in this process builds its own)."""
    from policyflow import bootstrap

    bootstrap.install(None)
    deps.close()


def _print_outcomes(summary: Any) -> int:
    from tabulate import tabulate

    from policyflow.domain.outcome import exit_status
    from policyflow.domain.status import Outcome

    rows = [[o.violation, o.workflow or "-", o.execution or "-", o.status.value,
             f"{o.duration_s:.1f}s" if o.duration_s is not None else "-"] for o in summary.outcomes]
    if rows:
        print(tabulate(rows, headers=["violation", "workflow", "execution", "status", "duration"]))
    else:
        print("nothing new")
    halted = next((o for o in summary.outcomes if o.halt), None)
    if halted is not None:
        left = sum(1 for o in summary.outcomes if o.status in (Outcome.UNFINISHED, Outcome.REFUSED))
        print(f"policyflow: stopped: {halted.detail}; {left} violation(s) left for the next cycle", file=sys.stderr)
    else:
        for outcome in summary.outcomes:
            if outcome.detail and outcome.status in (Outcome.ERROR, Outcome.UNFINISHED, Outcome.REFUSED):
                print(f"policyflow: {outcome.violation}: {outcome.detail}", file=sys.stderr)
    return exit_status(summary.outcomes)


def _serve(args: argparse.Namespace) -> int:
    import tempfile

    # Served runs execute in subprocesses: they read the same settings from the environment, and
    # write their metrics where this process can add them up (before any metric is created).
    for name, value in (("POLICYFLOW_CONFIG", args.config), ("POLICYFLOW_KUBECONFIG", args.kubeconfig),
                        ("POLICYFLOW_CONTEXT", args.context)):
        if value:
            os.environ[name] = str(Path(value).resolve()) if name != "POLICYFLOW_CONTEXT" else value
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="policyflow-metrics-"))
    atexit.register(_prepare_flows(args).close)  # this process's Lease goes with it (a crash lets it expire)
    from prefect import serve

    from flows.serving import deployments
    from policyflow.metrics import serve_metrics

    if args.metrics_port:
        serve_metrics(args.metrics_port)
        print(f"policyflow: metrics on http://0.0.0.0:{args.metrics_port}/metrics")
    serve(*deployments(interval=args.interval, retry_interval=args.retry_interval), limit=args.limit)
    return 0


#: How long a stopped watch gives Prefect's queues (events, logs) to drain before it exits anyway;
#: within Kubernetes' default grace period (30 s) before SIGKILL.
EXIT_DRAIN_SECONDS = 20.0


def _watch(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    deps = _prepare_flows(args)
    from flows.watching import watch

    async def until_stopped() -> bool:
        """Watch until SIGTERM (True) or until the watch ends by itself. Through the event loop's own
        signal handler, not only Prefect's: a chain's flow run turns SIGTERM into ``TerminationSignal``
        wherever the main thread is, and where that is inside asyncio (a socket write, a callback)
        asyncio logs it and goes on, so a stop was lost now and then. The loop's handler hears every
        SIGTERM (the signal's wakeup fd). The watch is cancelled again each second until it ends, in
        case code on the way (a flow run's engine) catches one cancellation. What was cancelled
        resumes at the next start."""
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        work = asyncio.create_task(watch(deps, resync_seconds=args.resync, chain_deployment=args.chain_deployment,
                                         batch_deployment=args.batch_deployment))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            while not work.done():
                work.cancel()
                await asyncio.wait({work}, timeout=1.0)
            if not work.cancelled():
                work.result()  # the watch's own end, or its error
            return stop.is_set()
        finally:
            stopping.cancel()
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        stopped = asyncio.run(until_stopped())
    finally:
        deps.close()
    if stopped:
        # Prefect drains its queues at exit without a bound; a stop must end (policyflow.exiting).
        from policyflow.exiting import exit_within

        exit_within(EXIT_DRAIN_SECONDS, 143)
    return 143 if stopped else 0  # SIGTERM: as a process killed by it would report (128 + 15)


def _health(args: argparse.Namespace) -> int:
    return show_health(_overrides(args), window=args.since, by=args.by, output=args.output)


def show_health(overrides: dict[str, Any], *, window: timedelta = timedelta(days=30), by: str = "rule",
                output: str = "table") -> int:
    """Print the health table of the lifecycle journal (``policyflow health``); no Prefect import."""
    from policyflow import settings as settings_module
    from policyflow.clients.kube import KubeClient
    from policyflow.domain.health import GroupBy, health
    from policyflow.domain.health_render import render
    from policyflow.domain.journal import decode
    from policyflow.journal import JournalStore

    settings, _ = settings_module.load(overrides)
    kube = KubeClient.connect(**settings.kube_options())
    try:
        store = JournalStore(kube, namespace=settings.journal_namespace, retry=settings.retry_policy())
        journal = decode(store.read_shards().values())
    finally:
        kube.close()
    for problem in journal.problems:
        print(f"policyflow: {problem}", file=sys.stderr)
    figures = health(journal.lifecycles.values(), now=datetime.now(UTC), window=window, by=GroupBy(by),
                     flip_window=settings.flip_window)
    print(render(figures, output))
    return 0


def _history(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from policyflow import settings as settings_module

    settings, routing = settings_module.load(_overrides(args))
    from policyflow.history import recent_history

    history = recent_history(settings, routing, limit=args.limit)
    print(tabulate(history.rows, headers="keys") if history.rows else "no violation runs yet")
    for name, why in history.down.items():
        print(f"policyflow: cluster {name}: down: {why} (its runs show no record)", file=sys.stderr)
    return EXIT_UNFINISHED if history.down else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``policyflow`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(args.log_level)  # the terminal shows --log-level and up ...
    let_the_story_through(args.log_level)  # ... while a run's story (INFO) still reaches the Prefect UI
    try:
        if args.command == "scan":
            return _scan(args)
        if args.command == "drift":
            return _drift(args)
        if args.command == "run-once":
            return run_cycle(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "watch":
            return _watch(args)
        if args.command == "retry-failed":
            return run_cycle(args, retry_failed=True)
        if args.command == "history":
            return _history(args)
        if args.command == "health":
            return _health(args)
        if args.command == "check":
            from policyflow import settings as settings_module
            from policyflow.preflight import run_check

            return run_check(*settings_module.load(_overrides(args)))
        if args.command == "demo":
            from policyflow.demo import run_demo, serve_demo

            if args.once:
                return run_demo(lambda settings: run_cycle(args, overrides=settings),
                                lambda settings: show_health(settings), cycles=args.cycles)
            import tempfile

            home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="policyflow-prefect-"))
            return serve_demo(lambda argv: main(list(argv)), home=home, port=args.port or None,
                              interval=args.interval)
    except ConfigError as exc:
        print(f"policyflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PolicyflowError as exc:
        print(f"policyflow: {exc}", file=sys.stderr)
        return EXIT_UNFINISHED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an unforeseen outage: one line, the traceback at DEBUG
        log.debug("unexpected error", exc_info=True)
        print(f"policyflow: unexpected {type(exc).__name__}: {exc} (--log-level DEBUG shows where)", file=sys.stderr)
        return EXIT_UNFINISHED
    except BaseException as exc:
        # SIGTERM during a flow run arrives as Prefect's TerminationSignal (not imported here: see _scan)
        if type(exc).__name__ == "TerminationSignal":
            return 143
        raise
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
