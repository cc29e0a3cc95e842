"""Settings and the config file: precedence, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyflow import settings
from policyflow.domain.errors import ConfigError
from tests.specs import ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("POLICYFLOW_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policyflow.yaml"
    path.write_text(text)
    return path


def test_env_overrides_file_and_cli_overrides_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "await_timeout: 60\npage_size: 10\nnamespaces: [a, b]\nroutes:\n- workflow: w\n")
    monkeypatch.setenv("POLICYFLOW_PAGE_SIZE", "20")
    monkeypatch.setenv("POLICYFLOW_SEVERITIES", "high,critical")
    s, routing = settings.load({"config": str(path), "context": "ctx"})
    assert (s.await_timeout, s.page_size, s.namespaces) == (60, 20, ("a", "b"))
    assert s.severities == ("high", "critical")
    assert s.context == "ctx"
    assert routing.routes[0].workflow == "w"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("await_timeout: soon\n", "await_timeout: Input should be a valid number"),
        ("retrys: 3\n", "retrys: unknown setting"),
        ("routes:\n- workflow: w\n  match: {policy: [x]}\n", "routes[0]: match.policy: unknown setting"),
        ("routes:\n- workflow: '{resource.nam}'\n", "routes[0]: workflow: unknown placeholder {resource.nam}"),
        ("routes:\n- match: {}\n", "routes[0]: workflow: Field required"),
        ("routes: {workflow: w}\n", "routes must be a list"),
        ("routes: [\n", "line"),
        ("- a\n", "top level must be a mapping"),
        ("results: [fail, maybe]\n", "'maybe' is not a result kind"),
    ],
)
def test_bad_config_files_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        settings.load({"config": str(path)})
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "Traceback" not in message


def test_bad_env_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICYFLOW_TESTKUBE_URL", "not a url")
    with pytest.raises(ConfigError, match="testkube_url"):
        settings.load()


def test_cloud_needs_both_org_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICYFLOW_TESTKUBE_ORG", "tkcorg_1")
    with pytest.raises(ConfigError, match="testkube_org and testkube_env"):
        settings.load()


def test_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        settings.load({"config": str(tmp_path / "nope.yaml")})


def test_token_is_secret_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICYFLOW_TESTKUBE_TOKEN", "tkcapi_supersecret")
    s, _ = settings.load()
    assert "supersecret" not in repr(s)
    assert "supersecret" not in str(s.model_dump())


def test_failure_digest_settings_have_defaults_and_bounds(tmp_path: Path) -> None:
    s, _ = settings.load()
    assert (s.failure_log_lines, s.failure_log_max_bytes) == (20, 1 << 20)
    for text, field in (("failure_log_lines: 501\n", "failure_log_lines"),
                        ("failure_log_max_bytes: 0\n", "failure_log_max_bytes")):
        with pytest.raises(ConfigError, match=field):
            settings.load({"config": str(write(tmp_path, text))})


TWO_CLUSTERS = """
testkube_url: http://testkube.example:8088
namespaces: [apps]
clusters:
  - name: prod
    context: prod-admin
    testkube_org: tkcorg_1
    testkube_env: tkcenv_prod
    testkube_token_env: PROD_TESTKUBE_TOKEN
  - name: staging
    kubeconfig: /etc/staging.kubeconfig
    namespaces: "team-*, apps"
    testkube_url: http://staging-testkube:8088
"""


def test_clusters_inherit_what_they_leave_unset(tmp_path: Path) -> None:
    s, _ = settings.load({"config": str(write(tmp_path, TWO_CLUSTERS))})
    prod, staging = (s.for_cluster(spec) for spec in s.cluster_specs())
    assert (prod.context, prod.namespaces, str(prod.testkube_url)) == ("prod-admin", ("apps",),
                                                                       "http://testkube.example:8088/")
    assert (prod.testkube_org, prod.testkube_env) == ("tkcorg_1", "tkcenv_prod")
    assert (str(staging.kubeconfig), staging.namespaces) == ("/etc/staging.kubeconfig", ("team-*", "apps"))
    assert (str(staging.testkube_url), staging.testkube_org) == ("http://staging-testkube:8088/", None)
    assert prod.clusters == () and staging.clusters == ()


def test_without_clusters_there_is_one_default_cluster_as_before(tmp_path: Path) -> None:
    s, _ = settings.load({"config": str(write(tmp_path, "namespaces: [apps]\n")), "context": "ctx"})
    (spec,) = s.cluster_specs()
    assert spec.name == "default"
    own = s.for_cluster(spec)
    assert own.kube_options() == s.kube_options() and own.namespaces == ("apps",)


@pytest.mark.parametrize(("text", "expected"), [
    ("clusters: [{name: Prod}]", "clusters.0.name: 'Prod' is not a cluster name"),
    ("clusters: [{name: a}, {name: a}]", "cluster 'a' is named twice"),
    ("clusters: [{name: a, in_cluster: true, context: x}]", "cluster a: in_cluster excludes kubeconfig"),
    ("clusters: [{name: a, testkube_token_env: X, testkube_token_block: y}]", "not both"),
    ("clusters: [{name: a, kubecontext: x}]", "clusters.0.kubecontext: unknown setting"),
    ("clusters: [{context: x}]", "clusters.0.name: Field required"),
])
def test_bad_clusters_are_one_line_naming_the_mistake(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings.load({"config": str(write(tmp_path, text))})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_the_readmes_two_cluster_two_engine_example_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = readme[readme.index("Two clusters and both policy engines"):].split("```yaml\n", 1)[1].split("```")[0]
    s, routing = settings.load({"config": str(write(tmp_path, example))})
    assert [c.name for c in s.clusters] == ["prod", "staging"]
    assert [source.value for source in s.sources] == ["kyverno", "gatekeeper"]
    assert [r.name for r in routing.routes] == ["prod-gatekeeper", "everything-else"]
