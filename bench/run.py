"""policyflow's benchmarks: four figures, each next to a baseline measured in the same run, as a ratio.

    .venv/bin/python bench/run.py [--reports 10000] [--storm 1000] [--latency 200] [--overhead 40]
                                  [--only scan,quiet,overhead,storm,latency] [--postgres [--install-postgres]]

1. scan     one detection cycle (`policyflow scan --output json`) against `kubectl get policyreports -A -o
            json`, on the same stand-in with N reports x 10 results, 5% of results failing: time and peak RSS.
2. quiet    one poll cycle of the policy-watch flow with Prefect bookkeeping (nothing new) against the bare
            scan in the same process; and no flow run is created for violations already handled.
3a. overhead  the orchestration cost per violation: N new failures in one poll cycle as one flow run + four
            task runs each, as handle-violations batches, and through the same step functions with no Prefect.
3. storm    K new failing results at once, through `policyflow serve` and a real Prefect server, the
            Testkube limit at 50: time until every one is triggered, awaited and annotated; against a plain
            asyncio/httpx script making the same HTTP calls. With --postgres, again with the Prefect server on
            PostgreSQL (a throwaway cluster from Debian's package, bench/postgres.py).
4. latency  watch mode: report turning failing -> Testkube POST, for M failures spread over a minute;
            p50/p99, against polling's expected wait (half the interval).

The data is built in the Kubernetes stand-in by this script. Nothing here asserts: it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from policyflow.domain.ledger import Record, Status, annotation_name, read_records  # noqa: E402
from policyflow.domain.model import POLICY_REPORT  # noqa: E402
from policyflow.domain.reports import parse_report  # noqa: E402
from policyflow.localserver import LocalPrefectServer  # noqa: E402
from policyflow.standins.kube import KubeStandin  # noqa: E402
from policyflow.standins.scenario import deployment, report_for  # noqa: E402
from policyflow.standins.testkube import TestkubeStandin  # noqa: E402

BENCH = ROOT / "bench"
DATA = ROOT / "policyflow" / "data"
PY = sys.executable
TEMPLATE = yaml.safe_load((DATA / "examples" / "policyreport-fail.yaml").read_text())


def row(name: str, value: float, baseline: float, unit: str, goal: str) -> None:
    ratio = value / baseline if baseline else float("nan")
    print(f"  {name:<44} {value:9.2f} {unit:<4} baseline {baseline:9.2f} {unit:<4} ratio {ratio:5.2f}   goal {goal}",
          flush=True)


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command, output to /dev/null."""
    started = time.monotonic()
    with open(os.devnull, "w") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    if status != 0:
        raise RuntimeError(f"{command[:3]} failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024


def populate(kube: KubeStandin, reports: int, *, handled: bool, cluster: str = "default") -> list[dict[str, Any]]:
    """`reports` PolicyReports x 10 results; 5% of all results fail. With `handled`, every failure
    already carries a finished record, as after earlier cycles, keyed as `cluster` keys it."""
    rng = random.Random(42)
    base = TEMPLATE["results"][0]
    failing: list[dict[str, Any]] = []
    total = reports * 10
    fail_slots = set(rng.sample(range(total), total // 20))
    now = datetime.now(UTC).isoformat()
    for i in range(reports):
        resource = kube.create(deployment(f"app-{i:05d}"))
        report = report_for(TEMPLATE, resource)
        results = []
        for j in range(10):
            result = dict(base, rule=f"rule-{j}", result="fail" if i * 10 + j in fail_slots else "pass")
            results.append(result)
        report["results"] = results
        report["summary"] = {"pass": sum(r["result"] == "pass" for r in results),
                             "fail": sum(r["result"] == "fail" for r in results), "warn": 0, "error": 0, "skip": 0}
        if handled:
            annotations = {}
            parsed = parse_report(POLICY_REPORT, {**report, "metadata": {**report["metadata"], "uid": "x"}})
            for v in (found.in_cluster(cluster) for found in parsed.violations):
                record = Record(key=v.key, policy=v.policy, rule=v.rule, resource=str(v.resource),
                                status=Status.PASSED, episode=1, report_uid="x", updated=now, workflow="smoke-nova",
                                execution="0" * 24, generation=1)
                annotations[annotation_name(v.key)] = record.to_json()
            report["metadata"]["annotations"] = annotations
        created = kube.create(report)
        if any(r["result"] == "fail" for r in results):
            failing.append(created)
    return failing


def recorded(kube: KubeStandin) -> Counter[str]:
    """How many records on the stand-in's PolicyReports are in each status."""
    statuses: Counter[str] = Counter()
    for report in kube.objects("wgpolicyk8s.io/v1alpha2", "PolicyReport"):
        records, _ = read_records(report["metadata"].get("annotations") or {})
        statuses.update(record.status.value for record in records.values())
    return statuses


def figure_scan(kube: KubeStandin, env: dict[str, str]) -> None:
    print("1. scan: one detection cycle vs kubectl get -A -o json (same stand-in)", flush=True)
    kubectl = ["kubectl", "--kubeconfig", env["POLICYFLOW_KUBECONFIG"], "get", "policyreports", "-A", "-o", "json"]
    ours = [PY, "-m", "policyflow.cli", "scan", "--output", "json"]
    measure(kubectl, env)  # warm the stand-in's caches for both alike
    k_times, k_mem, p_times, p_mem = [], [], [], []
    for _ in range(3):
        t, m = measure(kubectl, env)
        k_times.append(t)
        k_mem.append(m)
        t, m = measure(ours, env)
        p_times.append(t)
        p_mem.append(m)
    row("scan time (median of 3)", statistics.median(p_times), statistics.median(k_times), "s", "ratio <= 1.0")
    row("scan peak memory", max(p_mem), max(k_mem), "MiB", "<= 300 MiB")


def figure_quiet(env: dict[str, str], api_url: str) -> None:
    print("2. quiet cycle: policy-watch (Prefect bookkeeping included) vs the bare scan, same process", flush=True)
    done = subprocess.run([PY, str(BENCH / "quiet_cycle.py")], env={**env, "PREFECT_API_URL": api_url},
                          capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return
    result = json.loads(done.stdout.strip().splitlines()[-1])
    row("quiet poll cycle", result["cycle"], result["scan"], "s", "ratio <= 1.2")
    print(f"  violations already handled: {result['handled']}; flow runs created by the quiet cycle: "
          f"{result['new_runs']} (1 = the poll run itself); chains run: {result['outcomes']}", flush=True)


def figure_overhead(count: int, api_url: str, work: Path) -> None:
    print(f"3a. orchestration cost per violation: {count} new failures, one poll cycle, same process", flush=True)
    with TestkubeStandin(workflows=["smoke-nova"], queued_polls=0, running_polls=0) as testkube:
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "POLICYFLOW_TESTKUBE_URL": testkube.url, "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
               "POLICYFLOW_POLL_INTERVAL": "0.2", "POLICYFLOW_MAX_CONCURRENT_CHAINS": "16",
               "PREFECT_LOGGING_LEVEL": "WARNING"}
        done = subprocess.run([PY, str(BENCH / "overhead.py"), str(count), str(work / "overhead-kubeconfig")],
                              env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return
    result = json.loads(done.stdout.strip().splitlines()[-1])
    bare = result["bare"]
    row("one flow run + 4 task runs per violation", result["per_violation"], bare, "s",
        f"(cost per violation {(result['per_violation'] - bare) / count:.2f} s)")
    row("handle-violations batches", result["batched"], bare, "s",
        f"(cost per violation {(result['batched'] - bare) / count:.3f} s)")


async def baseline_storm(kube_url: str, token: str, testkube_url: str, reports: list[dict[str, Any]]) -> float:
    """The HTTP calls of every chain, made by a plain asyncio/httpx script, 50 at a time."""
    gate = asyncio.Semaphore(50)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=kube_url, headers=headers, timeout=30) as k, \
            httpx.AsyncClient(base_url=f"{testkube_url}/v1", timeout=30) as t:
        async def chain(report: dict[str, Any]) -> None:
            async with gate:
                name, ns = report["metadata"]["name"], "default"
                path = f"/apis/wgpolicyk8s.io/v1alpha2/namespaces/{ns}/policyreports/{name}"
                await k.get(path)
                await k.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{report['scope']['name']}")
                patch = {"Content-Type": "application/merge-patch+json"}
                await k.patch(path, content=json.dumps({"metadata": {"annotations": {"b/x": "claim"}}}), headers=patch)
                await t.get("/test-workflow-executions", params={"tagSelector": f"k={name}"})
                execution = (await t.post("/test-workflows/smoke-nova/executions", json={"tags": {"k": name}})).json()
                await k.patch(path, content=json.dumps({"metadata": {"annotations": {"b/x": "queued"}}}), headers=patch)
                while (await t.get(f"/test-workflow-executions/{execution['id']}")).json()["result"]["status"] not in (
                        "passed", "failed"):
                    pass
                await k.patch(path, content=json.dumps({"metadata": {"annotations": {"b/x": "passed"}}}), headers=patch)
                await k.post(f"/api/v1/namespaces/{ns}/events", json={
                    "metadata": {"generateName": "b."}, "involvedObject": {"kind": "Deployment", "name": "x"},
                    "reason": "R", "message": "m"})
        started = time.monotonic()
        await asyncio.gather(*(chain(r) for r in reports))
        return time.monotonic() - started


def figure_storm(storm: int, api_url: str, work: Path) -> None:
    print(f"3. storm: {storm} new failures at once through `policyflow serve` and a real Prefect server", flush=True)
    with KubeStandin(sorted((DATA / "crds").glob("*.yaml"))) as kube, \
            TestkubeStandin(workflows=["smoke-nova"], queued_polls=0, running_polls=0) as testkube:
        reports = [kube.create(report_for(TEMPLATE, kube.create(deployment(f"b-{i:04d}")))) for i in range(storm)]
        base = asyncio.run(baseline_storm(kube.url, "standin-token", testkube.url, reports))
    with KubeStandin(sorted((DATA / "crds").glob("*.yaml"))) as kube, \
            TestkubeStandin(workflows=["smoke-nova"], queued_polls=0, running_polls=0) as testkube:
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "POLICYFLOW_KUBECONFIG": str(kube.write_kubeconfig(work / "storm-kubeconfig")),
               "POLICYFLOW_TESTKUBE_URL": testkube.url, "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
               "POLICYFLOW_POLL_INTERVAL": "0.2", "POLICYFLOW_MAX_CONCURRENT_CHAINS": "50",
               "POLICYFLOW_TESTKUBE_CONCURRENCY": "50", "PREFECT_LOGGING_LEVEL": "WARNING"}
        log = (work / "storm-serve.log").open("w")
        serve = subprocess.Popen([PY, "-m", "policyflow.cli", "serve", "--interval", "5", "--metrics-port", "0"],
                                 env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            time.sleep(12)  # served, first polls done on an empty cluster
            started, started_wall = time.monotonic(), time.time()
            for i in range(storm):
                kube.create(report_for(TEMPLATE, kube.create(deployment(f"s-{i:04d}"))))
            deadline = started + 900
            while time.monotonic() < deadline:
                done = recorded(kube)["passed"]
                if done >= storm:
                    break
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            first = min((datetime.fromisoformat(e["scheduledAt"].replace("Z", "+00:00")).timestamp()
                         for e in testkube.executions), default=float("nan"))
            print(f"  annotated {done}/{storm}; executions {len(testkube.executions)}; the first test started "
                  f"{first - started_wall:.1f} s after the storm (the poll interval is 5 s)", flush=True)
        finally:
            serve.terminate()
            serve.wait(timeout=60)
            log.close()
    row(f"storm of {storm} (to every outcome recorded)", elapsed, base, "s", "<= 60 s")


def figure_latency(count: int, api_url: str, work: Path) -> None:
    print(f"4. detection latency, watch mode: {count} failures spread over a minute", flush=True)
    with KubeStandin(sorted((DATA / "crds").glob("*.yaml"))) as kube, \
            TestkubeStandin(workflows=["smoke-nova"], queued_polls=0, running_polls=0) as testkube:
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "POLICYFLOW_KUBECONFIG": str(kube.write_kubeconfig(work / "latency-kubeconfig")),
               "POLICYFLOW_TESTKUBE_URL": testkube.url, "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
               "POLICYFLOW_POLL_INTERVAL": "0.2", "PREFECT_LOGGING_LEVEL": "WARNING"}
        log = (work / "watch.log").open("w")
        watcher = subprocess.Popen([PY, "-m", "policyflow.cli", "watch"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=ROOT)
        created: dict[str, float] = {}
        try:
            time.sleep(15)
            resources = [kube.create(deployment(f"l-{i:04d}")) for i in range(count)]
            for resource in resources:
                report = kube.create(report_for(TEMPLATE, resource))
                created[report["metadata"]["name"]] = time.time()
                time.sleep(60 / count)
            deadline = time.monotonic() + 120
            while len(testkube.executions) < count and time.monotonic() < deadline:
                time.sleep(0.5)
            latencies = sorted(
                datetime.fromisoformat(e["scheduledAt"].replace("Z", "+00:00")).timestamp()
                - created[e["tags"]["PolicyViolationName"]]
                for e in testkube.executions
            )
            deadline = time.monotonic() + 120
            while recorded(kube)["passed"] < count and time.monotonic() < deadline:
                time.sleep(0.5)
            outcomes = recorded(kube)
        finally:
            watcher.terminate()
            try:
                watcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print("  (watch did not stop within 30 s of SIGTERM; killed)", flush=True)
                watcher.kill()
            log.close()
    if not latencies:
        print("  no executions")
        return
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"  started {len(latencies)}/{count}; outcomes recorded: {dict(outcomes)}", flush=True)
    row("p50 report failing -> Testkube POST", p50, 30.0, "s", "(baseline: polling every 60 s waits 30 s on average)")
    row("p99 report failing -> Testkube POST", p99, 60.0, "s", "p99 < 1 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=10000)
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--overhead", type=int, default=40)
    parser.add_argument("--only", default="scan,quiet,overhead,storm,latency")
    parser.add_argument("--postgres", action="store_true",
                        help="also run the storm with the Prefect server on PostgreSQL (Debian's package)")
    parser.add_argument("--install-postgres", action="store_true", help="apt-get install postgresql if missing")
    args = parser.parse_args()
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="policyflow-bench-"))
    started = time.monotonic()
    with LocalPrefectServer(work / "prefect") as server:
        if only & {"scan", "quiet"}:
            # kubectl sends no bearer token over plain http: let anonymous requests read, for both alike.
            with KubeStandin(sorted((DATA / "crds").glob("*.yaml")), anonymous_is_user=True) as kube:
                t = time.monotonic()
                failing = populate(kube, args.reports, handled="quiet" in only)
                print(f"built {args.reports} PolicyReports x 10 results ({len(failing)} with a failure) in "
                      f"{time.monotonic() - t:.0f} s", flush=True)
                env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "POLICYFLOW_KUBECONFIG": str(kube.write_kubeconfig(work / "kubeconfig")),
                       "POLICYFLOW_TESTKUBE_URL": "http://127.0.0.1:9", "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
                       "POLICYFLOW_TRACK_RESOURCE_CHANGES": "false"}
                if "scan" in only:
                    figure_scan(kube, env)
                if "quiet" in only:
                    figure_quiet(env, server.api_url)
        if "overhead" in only:
            figure_overhead(args.overhead, server.api_url, work)
        if "storm" in only:
            figure_storm(args.storm, server.api_url, work)
        if "latency" in only:
            figure_latency(args.latency, server.api_url, work)
    if "storm" in only and args.postgres:
        from postgres import ThrowawayPostgres  # bench/postgres.py

        with ThrowawayPostgres(work / "pg", install=args.install_postgres) as pg, \
                LocalPrefectServer(work / "prefect-pg", database_url=pg.url) as server:
            print("   (the same storm, the Prefect server on PostgreSQL)", flush=True)
            figure_storm(args.storm, server.api_url, work)
    print(f"bench done in {time.monotonic() - started:.0f} s (logs in {work})")


if __name__ == "__main__":
    main()
