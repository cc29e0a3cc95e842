"""Figure 3a of bench/run.py, in a process of its own: the orchestration cost per violation. N new failures
in one poll cycle, three ways on a Kubernetes stand-in of its own: through the chain's four step functions
with no Prefect at all (``bare``), as one flow run + four task runs per violation (``per_violation``), and as
handle-violations batches (``batched``).

    .venv/bin/python bench/overhead.py N KUBECONFIG_PATH

bench/run.py runs it with the Testkube stand-in's and the Prefect server's environment and parses the last
line of its output, one JSON object: seconds per way and the chains each poll cycle ran.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout first, as `python -c` with cwd=ROOT had it


def main() -> None:
    from run import DATA, TEMPLATE  # bench/run.py: the same data and report template as the parent

    from flows.poll import poll_reports
    from policyflow import bootstrap
    from policyflow import settings as sm
    from policyflow.chain.run import DirectSteps, run_chain
    from policyflow.domain.ref import ViolationRef
    from policyflow.standins.kube import KubeStandin
    from policyflow.standins.scenario import deployment, report_for

    n = int(sys.argv[1])
    kube = KubeStandin(sorted((DATA / "crds").glob("*.yaml"))).start()
    s, r = sm.load({"kubeconfig": str(kube.write_kubeconfig(Path(sys.argv[2])))})
    deps = bootstrap.build(s, r)
    bootstrap.install(deps)

    def storm(prefix: str) -> list[dict[str, Any]]:
        return [kube.create(report_for(TEMPLATE, kube.create(deployment(f"{prefix}-{i:03d}")))) for i in range(n)]

    async def bare(reports: list[dict[str, Any]]) -> None:
        # The same chain for every violation, no Prefect at all (no global concurrency limit: that is
        # a Prefect API call; Testkube starts bounded in this process instead).
        steps = DirectSteps(deps, gate=asyncio.Semaphore(s.testkube_concurrency))
        gate = asyncio.Semaphore(s.max_concurrent_chains)

        async def chain(report: dict[str, Any]) -> None:
            ref = ViolationRef(report_name=report["metadata"]["name"], report_namespace="default",
                               policy="require-resources", rule="require-resources-in-deployment")
            async with gate:
                await run_chain(ref, deps, steps)

        await asyncio.gather(*(chain(x) for x in reports))

    asyncio.run(poll_reports())  # warm-up: imports, the first flow run, the concurrency limit
    out: dict[str, float] = {}
    reports = storm("bare")
    t = time.monotonic()
    asyncio.run(bare(reports))
    out["bare"] = time.monotonic() - t
    for name, threshold in (("per_violation", 1_000_000), ("batched", 0)):
        bootstrap.install(bootstrap.build(s.model_copy(update={"storm_threshold": threshold}), r))
        storm(name[:5])
        t = time.monotonic()
        summary = asyncio.run(poll_reports())
        out[name] = time.monotonic() - t
        out[name + "_outcomes"] = len(summary.outcomes)
    kube.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
