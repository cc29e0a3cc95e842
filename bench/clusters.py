"""What each extra cluster costs a poll cycle, and what a cluster that is down costs the others.

    .venv/bin/python bench/clusters.py [--reports 500] [--new 0]

Three Kubernetes stand-ins (clusters ``a``, ``b``, ``c``), each with the same N PolicyReports x 10
results, 5% failing, every failure already handled (a quiet cycle). One policy-watch cycle (Prefect
bookkeeping included, against a local Prefect server) with ``clusters: [a]``, ``[a, b]`` and
``[a, b, c]``: cycle time (median of 3, after a warm-up cycle), its ratio to the one-cluster baseline,
and the API calls each cluster's stand-in received, by kind. Then ``c`` down, two ways: stopped (a port
nothing answers) and answering 503 to everything; the cycle against ``[a, b]`` alone, and when the
healthy clusters' last request of their own part came; twice, as a cluster found down is tried
once (no retries) at each cycle after. With ``--new K``, K new failures per cluster,
one cycle per configuration.

The stand-ins run in this process, the cycles in a child process (``--child``) that runs one cycle per
line it reads and answers one JSON line, so that this process can clear and read the request logs
around exactly one cycle. Nothing here asserts: it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PY = sys.executable
CLUSTERS = ("a", "b", "c")


def child() -> None:
    """Run one cycle per line read (``{"config": path, "warm": bool}``), answer one JSON line each."""
    from flows.poll import poll_reports
    from policyflow import bootstrap
    from policyflow import settings as sm

    built: dict[str, Any] = {}
    for line in sys.stdin:
        ask = json.loads(line)
        if ask["config"] not in built:
            s, r = sm.load({"config": ask["config"]})
            built[ask["config"]] = bootstrap.build(s, r)
        bootstrap.install(built[ask["config"]])
        t = time.monotonic()
        summary = asyncio.run(poll_reports())
        elapsed = time.monotonic() - t
        print(json.dumps({"cycle": elapsed, "outcomes": len(summary.outcomes), "problems": summary.problems,
                          "down": summary.counters.get("clusters_down", 0)}), flush=True)


def kind(method: str, path: str, query: dict[str, str]) -> str:
    """What a request to the Kubernetes API was, in the words of the report."""
    if "/leases" in path:
        return "Lease"
    if "/configmaps" in path:
        return "ConfigMap"
    if method == "GET" and ("limit" in query or "continue" in query or path.endswith(("/policyreports",
                                                                                         "/clusterpolicyreports"))):
        return "LIST"
    if method == "GET" and ("/namespaces/" in path or path.count("/") >= 5):
        return "GET"
    if method == "GET":
        return "discovery"
    return method


#: What a cluster's own part of a cycle sends (not the process Lease, renewed every few seconds
#: whatever the cycle does, nor the journal, read and written in the home cluster for every cluster).
OWN = ("LIST", "GET", "PATCH", "POST")


def own_requests(kube: Any) -> int:
    return sum(1 for r in kube.requests if kind(r.method, r.path, r.query) in OWN)


class Watcher:
    """When each stand-in last received a request of its cluster's part (:data:`OWN`), sampled every
    5 ms while a cycle runs."""

    def __init__(self, kubes: dict[str, Any]) -> None:
        self._kubes = kubes
        self.last: dict[str, float] = {}

    @contextmanager
    def running(self) -> Iterator[None]:
        started = time.monotonic()
        seen = dict.fromkeys(self._kubes, 0)
        self.last = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                for name, kube in self._kubes.items():
                    n = own_requests(kube)
                    if n != seen[name]:
                        seen[name], self.last[name] = n, time.monotonic() - started

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


class Cycles:
    """The child process: one cycle per :meth:`run`."""

    def __init__(self, env: dict[str, str], log: IO[str]) -> None:
        self._process = subprocess.Popen([PY, __file__, "--child"], env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)

    def run(self, config: Path) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps({"config": str(config)}) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the cycle process ended: see its log")
        return dict(json.loads(line))

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=60)


def calls(kube: Any) -> str:
    counted = Counter(kind(r.method, r.path, r.query) for r in kube.requests)
    order = ("LIST", "GET", "PATCH", "Lease", "ConfigMap", "discovery")
    shown = [f"{k} {counted.pop(k)}" for k in order if k in counted] + [f"{k} {v}" for k, v in counted.items()]
    return ", ".join(shown) or "none"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=500)
    parser.add_argument("--new", type=int, default=0,
                        help="also a cycle with this many new failures per cluster (slow: 10 take ~3 minutes)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return

    from run import DATA, TEMPLATE, populate  # bench/run.py: the same data as figures 1 and 2

    from policyflow.localserver import LocalPrefectServer
    from policyflow.standins.kube import KubeStandin
    from policyflow.standins.scenario import deployment, report_for
    from policyflow.standins.testkube import TestkubeStandin

    work = Path(tempfile.mkdtemp(prefix="policyflow-bench-clusters-"))
    started = time.monotonic()
    crds = sorted((DATA / "crds").glob("*.yaml"))
    with LocalPrefectServer(work / "prefect") as server, \
            TestkubeStandin(workflows=["smoke-nova"], queued_polls=0, running_polls=0) as testkube:
        kubes = {name: KubeStandin(crds).start() for name in CLUSTERS}
        try:
            t = time.monotonic()
            for name, kube in kubes.items():
                populate(kube, args.reports, handled=True, cluster=name)
            print(f"built {args.reports} PolicyReports x 10 results (5% failing, all handled) in each of "
                  f"{len(kubes)} clusters in {time.monotonic() - t:.0f} s", flush=True)
            configs: dict[int, Path] = {}
            for n in (1, 2, 3):
                lines = ["clusters:"] + [f"  - {{name: {c}, kubeconfig: {kubes[c].write_kubeconfig(work / c)}}}"
                                         for c in CLUSTERS[:n]]
                configs[n] = work / f"clusters-{n}.yaml"
                configs[n].write_text("\n".join(lines) + "\n")
            env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "POLICYFLOW_TESTKUBE_URL": testkube.url, "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
                   "POLICYFLOW_TRACK_RESOURCE_CHANGES": "false", "POLICYFLOW_POLL_INTERVAL": "0.2",
                   "PREFECT_LOGGING_LEVEL": "WARNING"}
            with (work / "cycles.log").open("w") as log:
                cycles = Cycles(env, log)
                try:
                    measure(cycles, configs, kubes, args, deployment, report_for, TEMPLATE)
                finally:
                    cycles.close()
        finally:
            for kube in kubes.values():
                kube.stop()
    print(f"bench done in {time.monotonic() - started:.0f} s (logs in {work})")


def measure(cycles: Cycles, configs: dict[int, Path], kubes: dict[str, Any], args: argparse.Namespace,
            deployment: Any, report_for: Any, template: dict[str, Any]) -> None:
    watcher = Watcher(kubes)

    def once(n: int) -> dict[str, Any]:
        for kube in kubes.values():
            kube.clear_requests()
        with watcher.running():
            return cycles.run(configs[n])

    print("1. quiet cycle (nothing new), Prefect bookkeeping included; median of 3 after a warm-up", flush=True)
    quiet: dict[int, float] = {}
    healthy_alone: dict[str, float] = {}
    for n in (1, 2, 3):
        once(n)  # warm-up: this configuration's clients, the first read of the journal
        times, lasts = [], []
        for _ in range(3):
            times.append(once(n)["cycle"])
            lasts.append(dict(watcher.last))
        quiet[n] = statistics.median(times)
        if n == 2:
            healthy_alone = {name: statistics.median(last.get(name, float("nan")) for last in lasts)
                             for name in ("a", "b")}
        print(f"  {n} cluster{'s' if n > 1 else ' '}  cycle {quiet[n]:6.2f} s   ratio to 1 cluster "
              f"{quiet[n] / quiet[1]:5.2f}   per extra cluster {(quiet[n] - quiet[1]) / max(n - 1, 1):+.2f} s",
              flush=True)
        for name in CLUSTERS[:n]:
            print(f"      API calls to {name}: {calls(kubes[name])}", flush=True)

    print("2. cluster c down, a and b healthy (baseline: the cycle of [a, b] alone, "
          f"{quiet[2]:.2f} s; their last own request (median) at "
          f"{', '.join(f'{k} {v:.2f} s' for k, v in sorted(healthy_alone.items()))})", flush=True)
    kubes["c"].stop()
    down(once, watcher, "stopped (connection refused)", quiet[2], healthy_alone, kubes)
    kubes["c"].start()
    once(3)  # back: caught up, warm again
    kubes["c"].inject(method="*", path="", status=503, times=1_000_000)
    down(once, watcher, "answering 503 to everything", quiet[2], healthy_alone, kubes)
    kubes["c"].clear_faults()
    once(3)

    if args.new:
        print(f"3. {args.new} new failures per cluster (Testkube stand-in, tests finish at once), one cycle",
              flush=True)
        new: dict[int, float] = {}
        for n in (1, 2, 3):
            for name in CLUSTERS[:n]:
                kube = kubes[name]
                for i in range(args.new):
                    kube.create(report_for(template, kube.create(deployment(f"new{n}-{i:03d}"))))
            result = once(n)
            new[n] = result["cycle"]
            print(f"  {n} cluster{'s' if n > 1 else ' '}  cycle {new[n]:6.2f} s   ratio to 1 cluster "
                  f"{new[n] / new[1]:5.2f}   chains run {result['outcomes']}", flush=True)
            for name in CLUSTERS[:n]:
                print(f"      API calls to {name}: {calls(kubes[name])}", flush=True)


def down(once: Any, watcher: Watcher, how: str, alone: float, healthy_alone: dict[str, float],
         kubes: dict[str, Any]) -> None:
    """Two cycles of [a, b, c] with c down (found down with the retries, then still down: one try):
    each one's time, and when a and b were done, against [a, b] alone."""
    for which in ("found down", "still down"):
        result = once(3)
        print(f"  c {how}, {which}: cycle {result['cycle']:6.2f} s   ratio to [a, b] alone "
              f"{result['cycle'] / alone:6.2f}   clusters down {result['down']}", flush=True)
        for name in ("a", "b"):
            last, base = watcher.last.get(name, float("nan")), healthy_alone.get(name, float("nan"))
            print(f"      last own request to {name} at {last:6.2f} s   alone {base:6.2f} s   "
                  f"ratio {last / base:5.2f}", flush=True)
        for problem in result["problems"]:
            print(f"      problem: {problem}", flush=True)
        print(f"      API calls to c: {calls(kubes['c'])}", flush=True)


if __name__ == "__main__":
    main()
