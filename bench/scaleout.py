"""The scale-out path: a Prefect server on PostgreSQL and several ``policyflow serve`` processes sharing
one storm of new failures, none handled twice.

    .venv/bin/python bench/scaleout.py [--violations 300] [--processes 2] [--install-postgres] [--no-baseline]
        [--runner-poll 2] [--env KEY=VALUE]... [--server-env KEY=VALUE]... [--sqlite]

A throwaway PostgreSQL (Debian's ``postgresql`` package; ``--install-postgres`` apt-installs it when
missing) holds one database per run; each run gets its own ``prefect server start`` on it, its own
Kubernetes and Testkube stand-ins and ``processes`` x ``policyflow serve`` with
``POLICYFLOW_CHAIN_DISPATCH=submit`` (the poll submits the violation runs as Scheduled deployment
runs, which whichever served process polls first takes; Prefect lets only one runner move a run from
Scheduled to Pending). The runners poll for scheduled runs every ``--runner-poll`` seconds
(``PREFECT_RUNNER_POLL_FREQUENCY``; Prefect's default is 10).

Which process ran what: a served process runs each flow run in a child process whose environment
carries ``PREFECT__FLOW_RUN_ID``; a sampler reads the serve processes' descendants in /proc every
0.2 s and so maps flow runs to processes; the Prefect API names their deployments. A chain run
inside a poll's own process (dispatch not ``submit``) has no child process of its own: it is counted
as "in a poll run".

With more than one process the same storm is run first with one process, as the baseline of the ratio.
Nothing here asserts: it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from postgres import ThrowawayPostgres  # noqa: E402
from run import DATA, PY, TEMPLATE, row  # noqa: E402

from policyflow.domain.testrun import TAG_KEY  # noqa: E402
from policyflow.localserver import LocalPrefectServer  # noqa: E402
from policyflow.standins.kube import KubeStandin  # noqa: E402
from policyflow.standins.scenario import deployment, report_for  # noqa: E402
from policyflow.standins.testkube import TestkubeStandin  # noqa: E402

CHAIN_DEPLOYMENTS = ("handle-violation", "handle-violations")
TIMEOUT = 600.0


# ------------------------------------------------------------------------------------- who ran what


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                stack.append(child)
    return found


def _flow_run_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    match = re.search(rb"(?:^|\0)PREFECT__FLOW_RUN_ID=([0-9a-f-]{36})", environ)
    return match.group(1).decode() if match else None


class Sampler(threading.Thread):
    """Flow run id -> index of the serve process whose child ran it, sampled from /proc."""

    def __init__(self, pids: list[int], period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.period = period
        self.ran_by: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for index, pid in enumerate(self.pids):
                for child in _descendants(pid):
                    flow_run = _flow_run_of(child)
                    if flow_run is not None:
                        self.ran_by.setdefault(flow_run, index)
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _passed(report: dict[str, Any]) -> bool:
    """A record on the report says passed. (The records are JSON strings inside the annotations: searching
    ``json.dumps(annotations)`` for ``"status":"passed"`` never matches, the quotes come out escaped.)"""
    return any('"status":"passed"' in value for value in (report["metadata"].get("annotations") or {}).values())


def _alive(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _post_all(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object a Prefect ``/filter`` endpoint answers, 200 at a time."""
    found: list[dict[str, Any]] = []
    while True:
        page = client.post(path, json={**body, "limit": 200, "offset": len(found)})
        page.raise_for_status()
        items: list[dict[str, Any]] = page.json()
        found.extend(items)
        if len(items) < 200:
            return found


# ---------------------------------------------------------------------------------------- one storm


@dataclass
class Storm:
    processes: int
    violations: int
    elapsed: float = 0.0
    annotated: int = 0
    executions: int = 0
    distinct_keys: int = 0
    spread: list[Counter[str]] = field(default_factory=list)  # per process: deployment name -> runs
    chain_runs: Counter[str] = field(default_factory=Counter)  # deployment/state -> runs, per the API
    in_poll: int = 0  # chain runs no serve process ran in a child of its own
    retried_503: int = 0  # "503" in the serve logs: the API refused (SQLite's "database is locked")
    server_errors: int = 0  # "database is locked" / "Traceback" in the Prefect server's log
    logs: list[Path] = field(default_factory=list)
    failure: str = ""

    @property
    def duplicates(self) -> int:
        return self.executions - self.distinct_keys


def run_storm(pg: ThrowawayPostgres | None, violations: int, processes: int, work: Path, *, runner_poll: int,
              extra_env: dict[str, str]) -> Storm:
    tag = f"p{processes}"
    result = Storm(processes, violations)
    url = pg.create_database(f"prefect_{tag}") if pg is not None else None  # None: SQLite in the server's home
    with LocalPrefectServer(work / f"prefect-{tag}", database_url=url) as server, \
            KubeStandin(sorted((DATA / "crds").glob("*.yaml"))) as kube, \
            TestkubeStandin(workflows=["smoke-nova"], queued_polls=0, running_polls=0) as testkube:
        env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "POLICYFLOW_KUBECONFIG": str(kube.write_kubeconfig(work / f"kubeconfig-{tag}")),
               "POLICYFLOW_TESTKUBE_URL": testkube.url, "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
               "POLICYFLOW_POLL_INTERVAL": "0.2", "POLICYFLOW_MAX_CONCURRENT_CHAINS": "50",
               "POLICYFLOW_TESTKUBE_CONCURRENCY": "50", "PREFECT_LOGGING_LEVEL": "WARNING",
               "POLICYFLOW_CHAIN_DISPATCH": "submit", "PREFECT_RUNNER_POLL_FREQUENCY": str(runner_poll),
               **extra_env}
        serves: list[subprocess.Popen[bytes]] = []
        opened = []
        try:
            for i in range(processes):
                result.logs.append(work / f"serve-{tag}-{i}.log")
                log = result.logs[-1].open("wb")
                opened.append(log)
                serves.append(subprocess.Popen(
                    [PY, "-m", "policyflow.cli", "serve", "--interval", "5", "--metrics-port", "0"],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
            sampler = Sampler([s.pid for s in serves])
            sampler.start()
            time.sleep(12 + 2 * processes)  # served, first polls done on an empty cluster
            for i, serve in enumerate(serves):
                if serve.poll() is not None:
                    raise RuntimeError(f"serve {i} exited ({serve.returncode}); see {result.logs[i]}")
            started = time.monotonic()
            for i in range(violations):
                kube.create(report_for(TEMPLATE, kube.create(deployment(f"s-{i:04d}"))))
            while time.monotonic() < started + TIMEOUT:
                result.annotated = sum(1 for r in kube.objects("wgpolicyk8s.io/v1alpha2", "PolicyReport")
                                       if _passed(r))
                if result.annotated >= violations:
                    break
                if not _alive(server.api_url) or all(s.poll() is not None for s in serves):
                    result.failure = "the Prefect server or every serve process died"
                    break
                time.sleep(1)
            result.elapsed = time.monotonic() - started
            # The logs up to here: what comes after is shutdown noise (cancelled services, refused connections).
            marks = [path.stat().st_size for path in (*result.logs, server.log_path)]
            time.sleep(1)  # let the last flow runs record their final states
            sampler.stop()
        finally:
            for serve in serves:
                serve.terminate()
            for serve in serves:
                try:
                    serve.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    serve.kill()
            for log in opened:
                log.close()
        executions = testkube.executions
        result.executions = len(executions)
        result.distinct_keys = len({(e.get("tags") or {}).get(TAG_KEY) for e in executions})
        names: dict[str, str] = {}
        runs: list[dict[str, Any]] = []
        sampled: list[dict[str, Any]] = []
        try:
            with httpx.Client(base_url=server.api_url, timeout=30) as api:
                names = {d["id"]: d["name"] for d in _post_all(api, "/deployments/filter", {})}
                chain_ids = [i for i, n in names.items() if n in CHAIN_DEPLOYMENTS]
                if chain_ids:
                    runs = _post_all(api, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": chain_ids}}})
                if sampler.ran_by:
                    sampled = _post_all(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": list(sampler.ran_by)}}})
        except httpx.HTTPError as exc:
            result.failure = (result.failure + "; " if result.failure else "") + f"Prefect API: {exc}"
    result.chain_runs = Counter(f"{names[r['deployment_id']]} {r['state_type']}" for r in runs)
    result.in_poll = sum(1 for r in runs if r["id"] not in sampler.ran_by)
    result.spread = [Counter() for _ in range(processes)]
    for run in sampled:
        name = names.get(run["deployment_id"] or "", "(no deployment)")
        result.spread[sampler.ran_by[run["id"]]][name] += 1
    texts = [path.read_bytes()[:mark].decode(errors="replace") for path, mark in zip(
        (*result.logs, server.log_path), marks, strict=True)]
    result.retried_503 = sum(len(re.findall(r"\b503\b", text)) for text in texts[:-1])
    result.server_errors = len(re.findall(r"database is locked|Traceback", texts[-1]))
    return result


def report(storm: Storm) -> None:
    print(f"  {storm.processes} process(es): annotated {storm.annotated}/{storm.violations} in "
          f"{storm.elapsed:.1f} s", flush=True)
    if storm.failure:
        print(f"    FAILED: {storm.failure}", flush=True)
    print(f"    Testkube executions {storm.executions}; distinct {TAG_KEY} tags {storm.distinct_keys}; "
          f"duplicates {storm.duplicates} (goal 0)", flush=True)
    print(f"    chain runs in the Prefect API: {dict(sorted(storm.chain_runs.items())) or 'none'}; "
          f"run inside a poll run (no child process of their own): {storm.in_poll}", flush=True)
    for i, spread in enumerate(storm.spread):
        print(f"    serve {i}: ran {dict(sorted(spread.items())) or 'nothing'}", flush=True)
    print(f"    until then, '503' in the serve logs: {storm.retried_503}; 'database is locked'/'Traceback' in the "
          f"Prefect server's log: {storm.server_errors}", flush=True)


def figure_scaleout(violations: int, processes: int, work: Path, *, install: bool, baseline: bool = True,
                    runner_poll: int = 2, extra_env: dict[str, str] | None = None, sqlite: bool = False) -> None:
    print(f"5. scale-out: {violations} new failures at once, {processes} x `policyflow serve`, Prefect server on "
          f"{'SQLite (for comparison)' if sqlite else 'PostgreSQL'}", flush=True)
    with contextlib.nullcontext(None) if sqlite else ThrowawayPostgres(work / "pg", install=install) as pg:
        if pg is not None:
            print(f"  PostgreSQL up in {pg.startup_seconds:.1f} s (port {pg.port})", flush=True)
        storms = []
        if baseline and processes > 1:
            storms.append(run_storm(pg, violations, 1, work, runner_poll=runner_poll, extra_env=extra_env or {}))
            report(storms[-1])
        storms.append(run_storm(pg, violations, processes, work, runner_poll=runner_poll,
                                extra_env=extra_env or {}))
        report(storms[-1])
    if len(storms) == 2:
        row(f"storm of {violations}, {processes} processes vs 1", storms[1].elapsed, storms[0].elapsed, "s",
            "ratio < 1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--violations", type=int, default=300)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--install-postgres", action="store_true",
                        help="apt-get install postgresql when missing (sudo when not root)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the same storm with one process")
    parser.add_argument("--runner-poll", type=int, default=2,
                        help="PREFECT_RUNNER_POLL_FREQUENCY for the serve processes (Prefect's default: 10)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the serve processes, e.g. POLICYFLOW_BATCH_SIZE=50")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the Prefect server, e.g. "
                        "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT=30")
    parser.add_argument("--sqlite", action="store_true", help="the Prefect server on SQLite instead, to compare")
    args = parser.parse_args()
    os.environ.update(dict(item.split("=", 1) for item in args.server_env))  # LocalPrefectServer inherits it
    # SIGTERM (and SIGINT, which a non-interactive shell's background job ignores) unwinds the `with`
    # blocks: the serve processes, the Prefect server and PostgreSQL are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    extra = dict(item.split("=", 1) for item in args.env)
    work = Path(tempfile.mkdtemp(prefix="policyflow-scaleout-"))
    started = time.monotonic()
    figure_scaleout(args.violations, args.processes, work, install=args.install_postgres,
                    baseline=not args.no_baseline, runner_poll=args.runner_poll, extra_env=extra,
                    sqlite=args.sqlite)
    print(f"scale-out done in {time.monotonic() - started:.0f} s (logs in {work})")


if __name__ == "__main__":
    main()
