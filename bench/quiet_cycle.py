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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout first, as `python -c` with cwd=ROOT had it


def main() -> None:
    from policyflow import settings as sm
    from tasks import runtime

    s, r = sm.load()
    runtime.install(runtime.build(s, r))
    # Imported only after runtime.install(), as when this was a `python -c` snippet in bench/run.py.
    from prefect.client.orchestration import get_client

    from flows.policy_watch import policy_watch
    from policyflow.scanning import scan_cluster

    def count() -> int:
        with get_client(sync_client=True) as c:
            return len(c.read_flow_runs(limit=200))

    def scan() -> Any:  # policyflow.scanning.Scan; not imported, the snippet's imports are kept as they were
        return scan_cluster(runtime.current().kube, s, r, now=datetime.now(UTC), lease_seconds=s.claim_lease)

    scan()  # warm-up
    t = time.monotonic()
    result = scan()
    scan_s = time.monotonic() - t
    asyncio.run(policy_watch())  # warm-up: imports, the first flow run
    before = count()
    t = time.monotonic()
    summary = asyncio.run(policy_watch())
    cycle_s = time.monotonic() - t
    after = count()
    print(json.dumps({"scan": scan_s, "cycle": cycle_s, "new_runs": after - before, "outcomes": len(summary.outcomes),
                      "handled": result.counters.get("handled", 0)}))


if __name__ == "__main__":
    main()
