"""Demo mode: time from a report turning failing to the Testkube POST, through `policyflow serve`
(a real local Prefect server, the stand-ins, scheduled polls). Prints each sample and the median.

    .venv/bin/python bench/demo_latency.py [--samples 5] [--interval 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from policyflow.localserver import LocalPrefectServer
from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import deployment, report_for
from policyflow.standins.testkube import TestkubeStandin

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "policyflow" / "data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    import yaml

    template = yaml.safe_load((DATA / "examples" / "policyreport-fail.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="policyflow-bench-"))
    with LocalPrefectServer(work / "prefect") as server, KubeStandin(sorted((DATA / "crds").glob("*.yaml"))) as kube, \
            TestkubeStandin(workflows=["smoke-nova"]) as testkube:
        env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "POLICYFLOW_KUBECONFIG": str(kube.write_kubeconfig(work / "kubeconfig")),
               "POLICYFLOW_TESTKUBE_URL": testkube.url, "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
               "POLICYFLOW_POLL_INTERVAL": "0.2"}
        log = (work / "serve.log").open("w")
        serve = subprocess.Popen([sys.executable, "-m", "policyflow.cli", "serve", "--interval", str(args.interval),
                                  "--metrics-port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(args.interval + 5)  # let the first polls run on an empty cluster
            samples = []
            for i in range(args.samples):
                resource = kube.create(deployment(f"app-{i}"))
                started = time.monotonic()
                kube.create(report_for(template, resource))
                while len(testkube.executions) <= i:
                    time.sleep(0.02)
                samples.append(time.monotonic() - started)
                print(f"sample {i + 1}: report failing -> Testkube POST in {samples[-1]:.2f} s", flush=True)
                time.sleep(args.interval * 0.37)  # land at different points of the poll interval
            print(f"median {statistics.median(samples):.2f} s, min {min(samples):.2f} s, max {max(samples):.2f} s "
                  f"(poll interval {args.interval:.0f} s)")
        finally:
            serve.terminate()
            serve.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
