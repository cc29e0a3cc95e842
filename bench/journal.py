"""What the lifecycle journal costs: N violations through the chain (no Prefect) twice on the same
stand-ins, without the journal (the baseline) and with it, then every report deleted and the
resolutions written; writes, bytes and time per episode, as ratios against the baseline.

    .venv/bin/python bench/journal.py [--violations 200]

Nothing here asserts: it prints. The Kubernetes and Testkube stand-ins log every request; a write is
a POST, PUT or PATCH.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policyflow import bootstrap  # noqa: E402
from policyflow import settings as settings_module  # noqa: E402
from policyflow.chain.deps import Deps  # noqa: E402
from policyflow.chain.run import DirectSteps, run_chain  # noqa: E402
from policyflow.domain.ref import ViolationRef  # noqa: E402
from policyflow.standins.kube import KubeStandin  # noqa: E402
from policyflow.standins.scenario import deployment, report_for  # noqa: E402
from policyflow.standins.testkube import TestkubeStandin  # noqa: E402

DATA = ROOT / "policyflow" / "data"
WRITES = ("POST", "PUT", "PATCH")


class Silent:
    """An observer that tells nobody (no Prefect here)."""

    def test_started(self, *args: Any, **kwargs: Any) -> None: ...
    def test_finished(self, *args: Any, **kwargs: Any) -> None: ...
    async def violation_artifact(self, *args: Any, **kwargs: Any) -> None: ...


def writes(kube: KubeStandin, what: str) -> tuple[int, int]:
    """(count, body bytes) of the write requests whose path contains ``what``."""
    found = [r for r in kube.requests if r.method in WRITES and what in r.path]
    return len(found), sum(len(r.raw) for r in found)


def load(kube: KubeStandin, n: int, prefix: str) -> list[dict[str, Any]]:
    import yaml

    template = yaml.safe_load((DATA / "examples" / "policyreport-fail.yaml").read_text())
    return [kube.create(report_for(template, kube.create(deployment(f"{prefix}-{i}")))) for i in range(n)]


async def chains(deps: Deps, reports: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    gate = asyncio.Semaphore(16)

    async def one(report: dict[str, Any]) -> None:
        async with gate:
            ref = ViolationRef(report_name=report["metadata"]["name"], report_namespace="default",
                               policy="require-resources", rule="require-resources-in-deployment")
            await run_chain(ref, deps, DirectSteps(deps))

    await asyncio.gather(*(one(r) for r in reports))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--violations", type=int, default=200)
    n = parser.parse_args().violations
    from tasks.health import close_resolved  # Prefect's import, but no Prefect server: a plain coroutine

    with tempfile.TemporaryDirectory() as tmp, KubeStandin(sorted((DATA / "crds").glob("*.yaml"))) as kube, \
            TestkubeStandin(workflows=["smoke-nova"]) as testkube:
        values = {"kubeconfig": str(kube.write_kubeconfig(Path(tmp) / "kubeconfig")), "testkube_url": testkube.url,
                  "default_workflow": "smoke-nova", "poll_interval": 0.01, "poll_interval_max": 0.02}
        settings, routing = settings_module.load(values)
        deps = bootstrap.build(settings, routing, observer=Silent())
        try:
            baseline_reports = load(kube, n, "baseline")
            deps.journal.refused = True  # the baseline: the same chain, no journal write
            kube.clear_requests()
            baseline_s = asyncio.run(chains(deps, baseline_reports))
            record_writes, record_bytes = writes(kube, "/policyreports/")
            deps.journal.refused = False

            reports = load(kube, n, "journaled")
            kube.clear_requests()
            journaled_s = asyncio.run(chains(deps, reports))
            journal_writes, journal_bytes = writes(kube, "/configmaps")
            for report in baseline_reports + reports:
                kube.delete(report["apiVersion"], report["kind"], report["metadata"]["name"], "default")
            kube.clear_requests()
            from policyflow.scanning import Scan

            closed = asyncio.run(close_resolved(deps, Scan()))
            resolve_writes, resolve_bytes = writes(kube, "/configmaps")
            config_maps = kube.objects("v1", "ConfigMap")
            stored = sum(len(k) + len(v) for cm in config_maps for k, v in (cm.get("data") or {}).items())
        finally:
            deps.close()
    episodes = n
    print(f"{n} violations, each one episode, through the chain with 16 at once (no Prefect):")
    print(f"  records on reports (baseline): {record_writes / episodes:.1f} writes and "
          f"{record_bytes / episodes:.0f} bytes per episode; {baseline_s:.2f} s")
    print(f"  journal, opened + tested:      {journal_writes / episodes:.1f} writes and "
          f"{journal_bytes / episodes:.0f} bytes per episode; {journaled_s:.2f} s "
          f"(ratio {journaled_s / baseline_s:.2f} to the baseline)")
    print(f"  journal, resolved:             {resolve_writes / max(len(closed.resolved), 1):.1f} writes and "
          f"{resolve_bytes / max(len(closed.resolved), 1):.0f} bytes per episode ({len(closed.resolved)} resolved)")
    print(f"  journal stored: {stored / n:.0f} bytes per violation with one closed episode "
          f"({stored} bytes in {len(config_maps)} ConfigMaps)")


if __name__ == "__main__":
    main()
