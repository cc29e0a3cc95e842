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
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout first, as `python -c` with cwd=ROOT had it


def main() -> None:
    from run import DATA, TEMPLATE  # bench/run.py: the same data and report template as the parent

    from policyflow import settings as sm
    from policyflow.standins.kube import KubeStandin
    from policyflow.standins.scenario import deployment, report_for
    from tasks import runtime

    n = int(sys.argv[1])
    kube = KubeStandin(sorted((DATA / "crds").glob("*.yaml"))).start()
    os.environ["POLICYFLOW_KUBECONFIG"] = str(kube.write_kubeconfig(Path(sys.argv[2])))
    s, r = sm.load()
    runtime.install(runtime.build(s, r))
    # Imported only after runtime.install(), as when this was a `python -c` snippet in bench/run.py.
    from flows.policy_watch import policy_watch
    from tasks.chain import (
        Target,
        await_result,
        fetch_violation,
        next_step,
        record_outcome,
        result_record,
        trigger_testkube,
    )
    from tasks.observe import bounded_here

    def storm(prefix: str) -> list[dict[str, Any]]:
        return [kube.create(report_for(TEMPLATE, kube.create(deployment(f"{prefix}-{i:03d}")))) for i in range(n)]

    async def bare(reports: list[dict[str, Any]]) -> None:
        # The same four steps for every violation, no Prefect at all.
        async def chain(report: dict[str, Any]) -> None:
            target = Target.of(report_name=report["metadata"]["name"], report_namespace="default",
                               policy="require-resources", rule="require-resources-in-deployment")
            fetched = await fetch_violation.fn(target)
            async with bounded_here(slots):  # no global concurrency limit: that is a Prefect API call
                routed = next_step(fetched).routed
                assert routed is not None  # every violation here routes to POLICYFLOW_DEFAULT_WORKFLOW
                triggered = await trigger_testkube.fn(fetched, routed)
            awaited = await await_result.fn(target.report, triggered)
            await record_outcome(target.report, result_record(triggered, awaited), fetched.violation)

        gate, slots = asyncio.Semaphore(s.max_concurrent_chains), asyncio.Semaphore(s.testkube_concurrency)

        async def bounded(report: dict[str, Any]) -> None:
            async with gate:
                await chain(report)

        await asyncio.gather(*(bounded(x) for x in reports))

    asyncio.run(policy_watch())  # warm-up: imports, the first flow run, the concurrency limit
    out: dict[str, float] = {}
    reports = storm("bare")
    t = time.monotonic()
    asyncio.run(bare(reports))
    out["bare"] = time.monotonic() - t
    for name, threshold in (("per_violation", 1_000_000), ("batched", 0)):
        runtime.current().settings = s.model_copy(update={"storm_threshold": threshold})
        storm(name[:5])
        t = time.monotonic()
        summary = asyncio.run(policy_watch())
        out[name] = time.monotonic() - t
        out[name + "_outcomes"] = len(summary.outcomes)
    kube.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
