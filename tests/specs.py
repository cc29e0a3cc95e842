"""Where the upstream contract files are: ``../shared/specs`` beside the checkout (or $POLICYFLOW_SPECS)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPECS = Path(os.environ.get("POLICYFLOW_SPECS", ROOT.parent / "shared" / "specs"))
EXAMPLES = SPECS / "examples"
CRDS = SPECS / "crds"
REPORT_CRDS = [
    CRDS / "wgpolicyk8s.io_policyreports.yaml",
    CRDS / "wgpolicyk8s.io_clusterpolicyreports.yaml",
    CRDS / "openreports.io_reports.yaml",
    CRDS / "openreports.io_clusterreports.yaml",
]
TESTWORKFLOW_EXECUTIONS_CRD = CRDS / "testworkflows.testkube.io_testworkflowexecutions.yaml"
TESTKUBE_OPENAPI = SPECS / "testkube" / "openapi.yaml"
#: Gatekeeper's K8sRequiredLabels constraint CRD, kept in the repository (tests/data/gatekeeper/SOURCES.md).
GATEKEEPER_CRD = ROOT / "tests" / "data" / "gatekeeper" / "k8srequiredlabels-crd.yaml"
#: The report CRDs and the Gatekeeper constraint CRD: a cluster with both sources.
BOTH_SOURCES_CRDS = [*REPORT_CRDS, GATEKEEPER_CRD]
KUBE_RECORDINGS = SPECS / "kube"  # a real kube-apiserver's answers, for the Kubernetes stand-in's tests


def example(name: str) -> dict[str, Any]:
    """An example report from shared/specs/examples, as the API would return it."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(data, dict)
    return data
