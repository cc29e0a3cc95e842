"""What a configured cluster that never answers costs a process that works in another cluster, as a
served run does: build every cluster's dependencies, run one violation's chain in cluster ``a`` (no
Prefect), close. Once with ``clusters: [a]`` (the baseline), once with ``[a, silent]``, where
``silent`` is a socket that accepts connections and never answers (a firewalled or hung API server);
times and the ratio to the baseline, and how many connections reached ``silent``.

    .venv/bin/python bench/silent_cluster.py

Nothing here asserts: it prints.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from journal import Silent  # noqa: E402

from policyflow import bootstrap  # noqa: E402
from policyflow import settings as settings_module  # noqa: E402
from policyflow.chain.run import DirectSteps, run_chain  # noqa: E402
from policyflow.domain.ref import ViolationRef  # noqa: E402
from policyflow.standins.kube import KubeStandin  # noqa: E402
from policyflow.standins.scenario import deployment, report_for  # noqa: E402
from policyflow.standins.testkube import TestkubeStandin  # noqa: E402
from tests.specs import REPORT_CRDS, TESTKUBE_OPENAPI, example  # noqa: E402


def connections(silent: socket.socket) -> int:
    """Connections waiting on the silent socket (taken off its backlog)."""
    count = 0
    while True:
        try:
            conn, _ = silent.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def main() -> None:
    for name in [n for n in os.environ if n.startswith("POLICYFLOW_")]:
        del os.environ[name]
    tmp = Path(tempfile.mkdtemp(prefix="policyflow-bench-silent-"))
    with KubeStandin(REPORT_CRDS) as kube, \
            TestkubeStandin(openapi_spec=TESTKUBE_OPENAPI, workflows=["smoke-nova"]) as testkube, \
            socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        silent.setblocking(False)
        good = kube.write_kubeconfig(tmp / "a.kubeconfig")
        (tmp / "silent.kubeconfig").write_text(
            good.read_text().replace(kube.url, f"http://127.0.0.1:{silent.getsockname()[1]}"))
        template = example("policyreport-fail.yaml")
        baseline = None
        for clusters in (["a"], ["a"], ["a", "silent"]):  # the first [a]: a warm-up, not printed
            report = kube.create(report_for(template, kube.create(deployment(f"web-{time.monotonic_ns()}"))))
            config = tmp / f"clusters-{len(clusters)}.yaml"
            config.write_text("clusters:\n" + "".join(
                f"  - name: {c}\n    kubeconfig: {tmp / (c + '.kubeconfig')}\n" for c in clusters))
            settings, routing = settings_module.load({
                "config": str(config), "testkube_url": testkube.url, "default_workflow": "smoke-nova",
                "poll_interval": 0.01, "poll_interval_max": 0.05})
            ref = ViolationRef(report_name=report["metadata"]["name"], report_namespace="default",
                               policy="require-resources", rule="require-resources-in-deployment", cluster="a")
            started = time.monotonic()
            deps = bootstrap.build(settings, routing, observer=Silent())
            built = time.monotonic()
            outcome = asyncio.run(run_chain(ref, deps, DirectSteps(deps)))
            chained = time.monotonic()
            deps.close()
            ended = time.monotonic()
            total = ended - started
            if baseline is None:
                baseline = 0.0  # the warm-up
                continue
            baseline = baseline or total
            print(f"clusters {clusters!s:18} build {built - started:6.2f} s   chain {chained - built:5.2f} s "
                  f"({outcome.status.value})   close {ended - chained:6.2f} s   total {total:6.2f} s   "
                  f"ratio to [a] {total / baseline:6.2f}   connections to silent {connections(silent)}",
                  flush=True)


if __name__ == "__main__":
    main()
