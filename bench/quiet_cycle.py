"""Figure 2 of bench/run.py, in a process of its own: one quiet poll cycle of the policy-watch flow (nothing
new, Prefect bookkeeping included) against the bare scan in the same process, and the flow runs it created.

    .venv/bin/python bench/quiet_cycle.py

bench/run.py runs it with the cluster's environment (``POLICYFLOW_KUBECONFIG`` of a populated stand-in,
``PREFECT_API_URL``) and parses the last line of its output, one JSON object:
``{"scan": s, "cycle": s, "new_runs": n, "outcomes": n, "handled": n}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout first, as `python -c` with cwd=ROOT had it


def main() -> None:
    from prefect.client.orchestration import get_client

    from flows.poll import poll_reports
    from policyflow import bootstrap
    from policyflow import settings as sm
    from policyflow.scanning import Scan, scan_cluster

    s, r = sm.load()
    deps = bootstrap.build(s, r)
    bootstrap.install(deps)

    def count() -> int:
        with get_client(sync_client=True) as c:
            return len(c.read_flow_runs(limit=200))

    def scan() -> Scan:
        return scan_cluster(deps.kube, s, r, now=datetime.now(UTC))

    scan()  # warm-up
    t = time.monotonic()
    result = scan()
    scan_s = time.monotonic() - t
    asyncio.run(poll_reports())  # warm-up: imports, the first flow run
    before = count()
    t = time.monotonic()
    summary = asyncio.run(poll_reports())
    cycle_s = time.monotonic() - t
    after = count()
    print(json.dumps({"scan": scan_s, "cycle": cycle_s, "new_runs": after - before, "outcomes": len(summary.outcomes),
                      "handled": result.counters.get("handled", 0)}))


if __name__ == "__main__":
    main()
