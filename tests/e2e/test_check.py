"""``policyflow check`` end to end: ``run_check`` against the Kubernetes and Testkube stand-ins.

No Prefect API is needed: the Prefect check only GETs ``{PREFECT_API_URL}/health``, which a tiny
loopback server answers here.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from policyflow.preflight import FAILED, OK, OPTIONAL, PREFECT_NOT_SET, run_check
from policyflow.settings import load
from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.specs import BOTH_SOURCES_CRDS, CRDS, REPORT_CRDS, TESTKUBE_OPENAPI

pytestmark = pytest.mark.e2e

MARKS = (OK, FAILED, OPTIONAL)


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/api/health"
        body = b"true" if ok else b'{"detail":"Not Found"}'
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def prefect_health() -> Iterator[str]:
    """A loopback server that answers ``/api/health`` as the Prefect API does; its API URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def env(kubeconfig: Path, testkube: TestkubeStandin, prefect_health: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """POLICYFLOW_* for a user of the stand-ins, and a Prefect API that is healthy."""
    for name in list(os.environ):
        if name.startswith(("POLICYFLOW_", "PREFECT_API_", "PREFECT_PROFILE")):
            monkeypatch.delenv(name)
    values = {
        "POLICYFLOW_KUBECONFIG": str(kubeconfig),
        "POLICYFLOW_TESTKUBE_URL": testkube.url,
        "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
        "POLICYFLOW_TESTKUBE_TIMEOUT": "2",
        "PREFECT_API_URL": prefect_health,
        "PREFECT_PROFILES_PATH": str(tmp_path / "no-profiles.toml"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def check(config: Path | None = None) -> tuple[int, list[str]]:
    """Run the check as ``policyflow check`` would; its exit status and the lines it wrote."""
    settings, routing = load({"config": config})
    lines: list[str] = []
    code = run_check(settings, routing, write=lines.append)
    return code, lines


def marked(lines: list[str], mark: str) -> list[str]:
    return [line for line in lines if line.startswith(f"{mark} ")]


def line_about(lines: list[str], *words: str) -> str:
    (line,) = [line for line in lines if all(word in line for word in words)]
    return line


@pytest.mark.usefixtures("env")
def test_everything_green() -> None:
    code, lines = check()
    assert code == 0, lines
    checks = [line for line in lines if line.startswith(MARKS)]
    assert checks and checks == marked(lines, OK), lines
    assert lines[-1] == "all required checks passed"
    names = "\n".join(checks)
    for expected in ("Prefect API", "cluster", "CRD policyreports.wgpolicyk8s.io", "CRD clusterreports.openreports.io",
                     "RBAC patch policyreports (wgpolicyk8s.io)", "RBAC create events (core)",
                     "RBAC get deployments (apps)", "Testkube", "TestWorkflow smoke-nova"):
        assert expected in names


@pytest.mark.usefixtures("env")
def test_a_denied_required_permission_fails_and_names_it(kube: KubeStandin) -> None:
    kube.deny(verb="patch", group="wgpolicyk8s.io", resource="policyreports")
    code, lines = check()
    assert code == 1
    (line,) = marked(lines, FAILED)
    assert "patch policyreports" in line
    assert "ClusterRole" in line
    assert lines[-1] == "1 required check failed"


@pytest.mark.usefixtures("env")
def test_a_denied_optional_permission_only_warns(kube: KubeStandin) -> None:
    kube.deny(verb="get", group="apps", resource="deployments")
    code, lines = check()
    assert code == 0, lines
    (line,) = marked(lines, OPTIONAL)
    assert "get deployments" in line
    assert not marked(lines, FAILED)


@pytest.mark.usefixtures("env")
def test_a_refused_token_says_so_and_never_shows_it(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with TestkubeStandin(workflows=["smoke-nova"], token="tkcapi_right") as guarded:
        monkeypatch.setenv("POLICYFLOW_TESTKUBE_URL", guarded.url)
        monkeypatch.setenv("POLICYFLOW_TESTKUBE_TOKEN", "tkcapi_wrong_token_value")
        code, lines = check()
        monkeypatch.setenv("POLICYFLOW_TESTKUBE_TOKEN", "tkcapi_right")
        right_code, right_lines = check()
    assert code == 1
    (line,) = marked(lines, FAILED)
    assert line.startswith(f"{FAILED} Testkube: token refused")
    assert "POLICYFLOW_TESTKUBE_TOKEN" in line
    assert right_code == 0, right_lines
    assert "token accepted" in line_about(right_lines, "Testkube")
    printed = "\n".join(lines + right_lines) + caplog.text
    assert "tkcapi_wrong_token_value" not in printed
    assert "tkcapi_right" not in printed


@pytest.mark.usefixtures("env")
def test_an_unknown_routed_workflow_is_named(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(
        "routes:\n"
        "- name: deployments\n"
        "  match: {kinds: [Deployment]}\n"
        "  workflow: no-such-workflow\n"
        "- match: {namespaces: [team-*]}\n"
        "  workflow: 'smoke-{namespace}'\n"
        "- workflow: smoke-nova\n"
    )
    code, lines = check(config)
    assert code == 1
    (line,) = marked(lines, FAILED)
    assert "no-such-workflow" in line and "route deployments" in line
    assert "smoke-nova" in line_about(lines, OK, "TestWorkflow smoke-nova")
    assert not [line for line in lines if "{namespace}" in line], "templated names are not checked"


@pytest.mark.usefixtures("env")
def test_testkube_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICYFLOW_TESTKUBE_URL", f"http://127.0.0.1:{closed_port()}")
    code, lines = check()
    assert code == 1
    (line,) = marked(lines, FAILED)
    assert line.startswith(f"{FAILED} Testkube: unreachable")
    assert "POLICYFLOW_TESTKUBE_URL" in line
    assert not [line for line in lines if "TestWorkflow" in line], "no workflow checks without Testkube"


def test_only_the_wgpolicyk8s_crds_is_enough(env: dict[str, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with KubeStandin([CRDS / "wgpolicyk8s.io_policyreports.yaml",
                      CRDS / "wgpolicyk8s.io_clusterpolicyreports.yaml"]) as only_wg:
        monkeypatch.setenv("POLICYFLOW_KUBECONFIG", str(only_wg.write_kubeconfig(tmp_path / "kc")))
        only_wg.deny(verb="*", group="openreports.io", resource="*")
        code, lines = check()
    assert code == 0, lines
    warned = marked(lines, OPTIONAL)
    assert any("CRD reports.openreports.io" in line for line in warned)
    assert any("CRD clusterreports.openreports.io" in line for line in warned)
    assert any("RBAC list reports (openreports.io)" in line for line in warned), "not read, so not required"
    assert OK + " CRD policyreports.wgpolicyk8s.io: served (v1alpha2)" in lines


def test_no_report_crds_at_all_fails(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KubeStandin([]) as bare:
        monkeypatch.setenv("POLICYFLOW_KUBECONFIG", str(bare.write_kubeconfig(tmp_path / "kc")))
        code, lines = check()
    assert code == 1
    failed = marked(lines, FAILED)
    assert len(failed) == 4 and all("CRD" in line and "install Kyverno" in line for line in failed)


def test_cluster_unreachable(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KubeStandin([]) as gone:
        kubeconfig = gone.write_kubeconfig(tmp_path / "kc")
    monkeypatch.setenv("POLICYFLOW_KUBECONFIG", str(kubeconfig))
    code, lines = check()
    assert code == 1
    (line,) = marked(lines, FAILED)
    assert line.startswith(f"{FAILED} cluster: cluster unreachable")
    assert "--kubeconfig" in line
    assert not [line for line in lines if "RBAC" in line or "CRD" in line]


@pytest.mark.usefixtures("env")
def test_prefect_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL")
    code, lines = check()
    assert code == 0
    assert f"{OPTIONAL} Prefect API: {PREFECT_NOT_SET}" in lines

    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{closed_port()}/api")
    code, lines = check()
    assert code == 1
    (line,) = marked(lines, FAILED)
    assert line.startswith(f"{FAILED} Prefect API:") and "unreachable" in line and "PREFECT_API_URL" in line


def test_gatekeeper_served_is_checked_and_its_rbac_is_optional(env: dict[str, str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with KubeStandin(BOTH_SOURCES_CRDS) as both:
        monkeypatch.setenv("POLICYFLOW_KUBECONFIG", str(both.write_kubeconfig(tmp_path / "kc")))
        code, lines = check()
        assert code == 0, lines
        assert OK + " CRDs constraints.gatekeeper.sh: served (v1beta1): K8sRequiredLabels" in lines
        assert OK + " RBAC patch * (constraints.gatekeeper.sh): allowed" in lines
        both.deny(verb="list", group="constraints.gatekeeper.sh", resource="*")
        code, lines = check()
        assert code == 0, lines
        assert "optional" in line_about(lines, "RBAC list * (constraints.gatekeeper.sh)")
        monkeypatch.setenv("POLICYFLOW_SOURCES", "kyverno,gatekeeper")
        code, lines = check()
    assert code == 1
    (line,) = marked(lines, FAILED)
    assert "RBAC list * (constraints.gatekeeper.sh)" in line and "rbac.yaml" in line


@pytest.mark.usefixtures("env")
def test_kyverno_only_clusters_get_no_gatekeeper_lines_unless_it_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    code, lines = check()
    assert code == 0 and not [line for line in lines if "gatekeeper" in line], lines
    monkeypatch.setenv("POLICYFLOW_SOURCES", "gatekeeper")
    code, lines = check()
    assert code == 1
    (line,) = marked(lines, FAILED)
    assert line == (f"{FAILED} CRDs constraints.gatekeeper.sh: not served (constraints.gatekeeper.sh/v1beta1), but "
                    "sources names gatekeeper: install OPA Gatekeeper, or drop gatekeeper from sources")
    assert not [line for line in lines if "wgpolicyk8s.io" in line and line.startswith(FAILED)]


# --- several clusters -------------------------------------------------------------------------------


@pytest.fixture
def staging_testkube() -> Iterator[TestkubeStandin]:
    """The staging cluster's own Testkube agent, with its own copy of smoke-nova."""
    with TestkubeStandin(openapi_spec=TESTKUBE_OPENAPI, workflows=["smoke-nova"]) as server:
        yield server


def two_clusters(tmp_path: Path, staging: KubeStandin, testkube: TestkubeStandin, token_env: str = "") -> Path:
    """``default`` (the top-level kubeconfig and Testkube) and ``staging``, with a Testkube of its own."""
    config = tmp_path / "clusters.yaml"
    token = f"\n    testkube_token_env: {token_env}" if token_env else ""
    config.write_text(f"""
clusters:
  - name: default
  - name: staging
    kubeconfig: {staging.write_kubeconfig(tmp_path / "staging.kubeconfig")}
    testkube_url: {testkube.url}{token}
""")
    return config


def blocks(lines: list[str]) -> dict[str, list[str]]:
    """The lines before the first cluster heading (under ""), and each cluster's block by name."""
    found: dict[str, list[str]] = {"": []}
    current = ""
    for line in lines[:-1]:
        if line.startswith("cluster "):
            current = line.removeprefix("cluster ")
            found[current] = []
        else:
            found[current].append(line)
    return found


@pytest.mark.usefixtures("env")
def test_two_clusters_get_a_block_each_and_a_refusal_in_one_fails_the_check(
    tmp_path: Path, testkube: TestkubeStandin, staging_testkube: TestkubeStandin
) -> None:
    with KubeStandin(REPORT_CRDS) as staging:
        staging.deny(verb="patch", group="wgpolicyk8s.io", resource="policyreports")
        code, lines = check(two_clusters(tmp_path, staging, staging_testkube))
    assert code == 1, lines
    assert lines[-1] == "1 required check failed (cluster staging)"
    found = blocks(lines)
    assert list(found) == ["", "default", "staging"], lines
    shared = found[""]
    assert [line.split(":")[0] for line in shared] == [f"{OK} Prefect API", f"{OK} Testkube",
                                                       f"{OK} TestWorkflow smoke-nova"], "shared checks once"
    assert testkube.url in shared[1]
    default = found["default"]
    assert all(line.startswith(f"  {OK} ") for line in default), default
    assert any("RBAC patch policyreports" in line for line in default)
    assert not any("Testkube" in line for line in default), "default uses the shared target, checked once"
    assert any("RBAC patch configmaps" in line for line in default), "the journal, in the home cluster"
    staging_lines = found["staging"]
    (refused,) = [line for line in staging_lines if not line.startswith(f"  {OK} ")]
    assert refused.startswith(f"  {FAILED} RBAC patch policyreports") and "ClusterRole" in refused
    assert any(line.startswith(f"  {OK} Testkube: {staging_testkube.url}") for line in staging_lines)
    assert any(line.startswith(f"  {OK} TestWorkflow smoke-nova") for line in staging_lines)
    assert not any("configmaps" in line for line in staging_lines), "no journal there"


@pytest.mark.usefixtures("env")
def test_a_cluster_that_is_down_fails_its_own_block_only(
    tmp_path: Path, staging_testkube: TestkubeStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STAGING_TESTKUBE_TOKEN", raising=False)
    with KubeStandin(REPORT_CRDS) as staging:
        config = two_clusters(tmp_path, staging, staging_testkube, token_env="STAGING_TESTKUBE_TOKEN")
    code, lines = check(config)
    assert code == 1, lines
    found = blocks(lines)
    assert all(line.startswith(("  " + OK, OK)) for line in found[""] + found["default"]), lines
    failed = [line for line in found["staging"] if line.startswith(f"  {FAILED} ")]
    assert [line.split(":")[0] for line in failed] == [f"  {FAILED} cluster", f"  {FAILED} Testkube token"], lines
    assert "unreachable" in failed[0]
    assert "STAGING_TESTKUBE_TOKEN is not set" in failed[1]
    assert not [line for line in found["staging"] if "RBAC" in line or "CRD" in line]
    assert lines[-1] == "2 required checks failed (cluster staging)"
