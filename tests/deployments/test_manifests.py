"""What a platform team applies (``deployments/``): the kustomization renders and every object is valid
Kubernetes, the RBAC is exactly what policyflow uses, the pod runs locked down, the work-pool files
agree with the kustomization, and the examples match the upstream contracts.

Offline by design. The Kubernetes objects are validated against the JSON schemas that the
``kubernetes-validate`` package ships (strict: unknown fields fail); a socket guard makes any network
use a failure. ``kubectl apply --dry-run=client`` is not used: it needs an apiserver for discovery and
the OpenAPI document even in client mode.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from policyflow import settings as settings_module
from policyflow.domain.model import GATEKEEPER_GROUP, POLICY_REPORT
from policyflow.domain.permissions import needed
from policyflow.domain.reports import parse_report
from tests.specs import CRDS, EXAMPLES, ROOT, example

DEPLOYMENTS = ROOT / "deployments"
KUSTOMIZATION = DEPLOYMENTS / "kubernetes"
WORK_POOL = DEPLOYMENTS / "work-pool"
OUR_EXAMPLES = DEPLOYMENTS / "examples"

#: Kubernetes versions the objects must be valid for: the oldest one we claim (still in the
#: schemas kubernetes-validate ships) and the newest one it knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())

SEED_URL = "http://nginx-no-cpu.default.svc"

Obj = dict[str, Any]
Perm = tuple[str, str, str]


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: validation must work offline."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during an offline check: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _kubectl_kustomize() -> list[Obj]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZATION)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},  # rendering never needs a cluster
    )
    assert done.returncode == 0, f"kubectl kustomize failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _render_without_kubectl() -> list[Obj]:
    """The few kustomize features the kustomization uses (resources, namespace, a ConfigMap from a
    file without hash). Only used when kubectl is absent, so the checks of the objects still run."""
    kustomization = yaml.safe_load((KUSTOMIZATION / "kustomization.yaml").read_text())
    objects: list[Obj] = []
    for name in kustomization["resources"]:
        objects += [doc for doc in yaml.safe_load_all((KUSTOMIZATION / name).read_text()) if doc]
    for generator in kustomization.get("configMapGenerator", []):
        assert generator.get("options", {}).get("disableNameSuffixHash"), "the fallback renders no hash"
        data = {Path(f).name: (KUSTOMIZATION / f).read_text() for f in generator["files"]}
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                        "data": data})
    for obj in objects:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            obj["metadata"]["namespace"] = kustomization["namespace"]
        for labels in kustomization.get("labels", []):
            assert not labels.get("includeSelectors"), "the fallback adds labels to metadata only"
            obj["metadata"]["labels"] = {**obj["metadata"].get("labels", {}), **labels["pairs"]}
    return objects


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    """The kustomization's objects, as ``kubectl kustomize`` renders them."""
    if shutil.which("kubectl"):
        return _kubectl_kustomize()
    return _render_without_kubectl()


def only(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def granted(role: Obj) -> set[Perm]:
    """(verb, group, resource) for every rule of a ClusterRole; anything but plain grants fails. The one
    wildcard allowed is the resources of Gatekeeper's constraints group (one kind per template)."""
    grants: set[Perm] = set()
    for rule in role["rules"]:
        assert not rule.keys() - {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, verb), f"wildcard in {role['metadata']['name']}: {rule}"
                    assert resource != "*" or group == GATEKEEPER_GROUP, f"wildcard in {role['metadata']['name']}"
                    grants.add((verb, group, resource))
    return grants


def container(pod_spec: Obj) -> Obj:
    (only_container,) = pod_spec["containers"]
    return only_container


def env_of(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def assert_locked_down(pod_spec: Obj, where: str) -> None:
    """Non-root, read-only root, no capabilities, no privilege escalation, RuntimeDefault seccomp."""
    pod = pod_spec.get("securityContext", {})
    c = container(pod_spec)
    sc = c.get("securityContext", {})
    assert pod.get("runAsNonRoot") is True, where
    assert isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0, where
    assert sc.get("runAsNonRoot") is not False and sc.get("runAsUser", 1) != 0, where
    assert sc.get("allowPrivilegeEscalation") is False, where
    assert sc.get("readOnlyRootFilesystem") is True, where
    assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), where
    assert "RuntimeDefault" in (pod.get("seccompProfile", {}).get("type"), sc.get("seccompProfile", {}).get("type"))
    assert "privileged" not in sc and not pod_spec.get("hostNetwork") and not pod_spec.get("hostPID"), where


def assert_token_only_from_secret(c: Obj, secret: str, key: str, where: str) -> None:
    """The Testkube token comes from the Secret, and no *TOKEN* variable has a plain value."""
    env = env_of(c)
    ref = env["POLICYFLOW_TESTKUBE_TOKEN"]
    assert "value" not in ref, f"{where}: the token must never be a plain env value"
    assert ref["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key, "optional": True}}, where
    plain = [name for name, e in env.items() if "TOKEN" in name.upper() and "value" in e]
    assert not plain, f"{where}: plain values for {plain}"
    assert not c.get("envFrom"), f"{where}: envFrom would hand over a whole ConfigMap/Secret"


def writable_mounts(pod_spec: Obj) -> set[str]:
    """Mount paths backed by an emptyDir."""
    empty = {v["name"] for v in pod_spec.get("volumes", []) if "emptyDir" in v}
    return {m["mountPath"] for m in container(pod_spec).get("volumeMounts", []) if m["name"] in empty}


def config_source(pod_spec: Obj, config_path: str) -> tuple[str, str]:
    """(ConfigMap name, key) that ``config_path`` is read from, following the volume mounts."""
    c = container(pod_spec)
    directory, filename = config_path.rsplit("/", 1)
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == mount["name"]]
    return volume["configMap"]["name"], filename


def seed_violation() -> Any:
    (violation,) = parse_report(POLICY_REPORT, example("policyreport-fail.yaml")).violations
    return violation


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No POLICYFLOW_* from the caller's shell leaks into the settings under test."""
    for name in list(os.environ):
        if name.startswith("POLICYFLOW_"):
            monkeypatch.delenv(name)


# --- the kustomization ---------------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not on PATH (needed to render the kustomization)")
def test_kustomization_renders_offline_with_kubectl() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in _kubectl_kustomize())
    assert kinds == sorted([
        ("Namespace", "policyflow"),
        ("ServiceAccount", "policyflow"),
        ("ClusterRole", "policyflow"),
        ("ClusterRole", "policyflow-resource-reader"),
        ("ClusterRoleBinding", "policyflow"),
        ("ClusterRoleBinding", "policyflow-resource-reader"),
        ("ClusterRole", "policyflow-gatekeeper"),
        ("ClusterRoleBinding", "policyflow-gatekeeper"),
        ("Role", "policyflow-leases"),
        ("RoleBinding", "policyflow-leases"),
        ("Role", "policyflow-journal"),
        ("RoleBinding", "policyflow-journal"),
        ("Secret", "policyflow-testkube"),
        ("ConfigMap", "policyflow-config"),
        ("Deployment", "policyflow"),
        ("Service", "policyflow-metrics"),
    ])


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not on PATH (nothing to compare with)")
def test_the_fallback_renders_what_kubectl_renders() -> None:
    """Without kubectl the checks below run on the fallback's objects: they must be the same."""
    def by_kind_and_name(obj: Obj) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    assert sorted(_render_without_kubectl(), key=by_kind_and_name) == sorted(_kubectl_kustomize(),
                                                                              key=by_kind_and_name)


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_kubernetes(rendered: list[Obj], version: str) -> None:
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is not valid Kubernetes {version}: "
                        f"{where}: {exc.message}")


@pytest.mark.usefixtures("no_network")
def test_the_schema_check_is_strict_and_offline(rendered: list[Obj]) -> None:
    """A misspelt field or a wrong type is caught, so the validation above means something."""
    deployment = copy.deepcopy(only(rendered, "Deployment"))
    container(deployment["spec"]["template"]["spec"])["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    role = copy.deepcopy(only(rendered, "ClusterRole", "policyflow"))
    role["rules"][0]["verbs"] = "get"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, KUBERNETES_VERSIONS[0], strict=True)


def test_all_namespaced_objects_live_in_the_policyflow_namespace(rendered: list[Obj]) -> None:
    namespace = only(rendered, "Namespace")["metadata"]["name"]
    for obj in rendered:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace") == namespace, obj["kind"]


def test_roles_grant_exactly_what_policyflow_needs(rendered: list[Obj]) -> None:
    required = {(p.verb, p.group, p.resource) for p in needed() if p.required and not p.own_namespace}
    optional = {(p.verb, p.group, p.resource) for p in needed() if not p.required and not p.own_namespace}
    constraints = {perm for perm in optional if perm[1] == GATEKEEPER_GROUP}
    assert constraints == {(verb, GATEKEEPER_GROUP, "*") for verb in ("get", "list", "watch", "patch")}
    assert granted(only(rendered, "ClusterRole", "policyflow")) == required
    assert granted(only(rendered, "ClusterRole", "policyflow-resource-reader")) == optional - constraints
    assert granted(only(rendered, "ClusterRole", "policyflow-gatekeeper")) == constraints
    for role, setting in (("policyflow-leases", "lease_namespace"), ("policyflow-journal", "journal_namespace")):
        own = {(p.verb, p.group, p.resource) for p in needed() if p.own_namespace and p.namespace_setting == setting}
        assert granted(only(rendered, "Role", role)) == own
        binding = only(rendered, "RoleBinding", role)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "policyflow", "namespace": "policyflow"}]


def test_every_cluster_role_is_bound_to_the_service_account(rendered: list[Obj]) -> None:
    account = only(rendered, "ServiceAccount")
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"],
               "namespace": account["metadata"]["namespace"]}
    roles = {o["metadata"]["name"] for o in rendered if o["kind"] == "ClusterRole"}
    bound = set()
    for binding in (o for o in rendered if o["kind"] == "ClusterRoleBinding"):
        assert binding["subjects"] == [subject]
        assert binding["roleRef"]["kind"] == "ClusterRole"
        bound.add(binding["roleRef"]["name"])
    assert bound == roles == {"policyflow", "policyflow-resource-reader", "policyflow-gatekeeper"}


def test_the_deployment_runs_serve_as_the_service_account(rendered: list[Obj]) -> None:
    deployment = only(rendered, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    c = container(spec)
    assert deployment["spec"]["replicas"] == 1
    assert spec["serviceAccountName"] == only(rendered, "ServiceAccount")["metadata"]["name"]
    assert spec.get("automountServiceAccountToken", True) is True, "the in-cluster config needs the token"
    assert c["image"] == "ghcr.io/example/policyflow:0.1.0"
    assert c.get("args") == ["serve"] and "command" not in c, "the image's ENTRYPOINT is policyflow"
    env = env_of(c)
    assert env["POLICYFLOW_TESTKUBE_URL"]["value"] == "http://testkube-api-server.testkube:8088"
    assert env["PREFECT_API_URL"]["value"] == "http://prefect-server.prefect:4200/api"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][kind].keys()


def test_the_deployment_mounts_the_config(rendered: list[Obj]) -> None:
    spec = only(rendered, "Deployment")["spec"]["template"]["spec"]
    path = env_of(container(spec))["POLICYFLOW_CONFIG"]["value"]
    assert path == "/etc/policyflow/policyflow.yaml"
    name, key = config_source(spec, path)
    config_map = only(rendered, "ConfigMap", name)
    assert name == "policyflow-config" and key in config_map["data"]


def test_the_token_comes_only_from_the_secret(rendered: list[Obj]) -> None:
    secret = only(rendered, "Secret")
    assert secret["metadata"]["name"] == "policyflow-testkube"
    assert "token" in {**secret.get("data", {}), **secret.get("stringData", {})}
    c = container(only(rendered, "Deployment")["spec"]["template"]["spec"])
    assert_token_only_from_secret(c, "policyflow-testkube", "token", "Deployment")
    assert "replace" in (KUSTOMIZATION / "secret.yaml").read_text().lower(), "say the placeholder is one"


def test_the_pod_is_locked_down(rendered: list[Obj]) -> None:
    spec = only(rendered, "Deployment")["spec"]["template"]["spec"]
    assert_locked_down(spec, "Deployment")
    prefect_home = env_of(container(spec))["PREFECT_HOME"]["value"]
    assert {"/tmp", prefect_home} <= writable_mounts(spec), "read-only root: /tmp and PREFECT_HOME need volumes"


def test_the_namespace_enforces_the_restricted_pod_security_standard(rendered: list[Obj]) -> None:
    labels = only(rendered, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_metrics_are_exposed_probed_and_scraped(rendered: list[Obj]) -> None:
    template = only(rendered, "Deployment")["spec"]["template"]
    c = container(template["spec"])
    (port,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert port["containerPort"] == 9464
    annotations = template["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "9464",
                           "prometheus.io/path": "/metrics"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    service = only(rendered, "Service")
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "metrics" and service_port["targetPort"] in ("metrics", 9464)
    selector = service["spec"]["selector"]
    assert selector.items() <= template["metadata"]["labels"].items()


def test_the_config_map_routes_the_seed_violation(rendered: list[Obj], tmp_path: Path, clean_env: None) -> None:
    config = tmp_path / "policyflow.yaml"
    config.write_text(only(rendered, "ConfigMap", "policyflow-config")["data"]["policyflow.yaml"])
    _, routing = settings_module.load({"config": config})
    routed = routing.route(seed_violation())
    assert routed is not None and routed.workflow == "smoke-nova"
    assert routed.config == {"url": SEED_URL}


# --- the image -----------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deployments/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOYMENTS / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def test_the_dockerfile_builds_a_non_root_policyflow_image(rendered: list[Obj]) -> None:
    steps = dockerfile()
    values = dict(steps)  # the last of each instruction
    assert [a for i, a in steps if i == "FROM"] == ["python:3.11-slim"]
    assert json.loads(values["ENTRYPOINT"]) == ["policyflow"]
    assert json.loads(values["CMD"]) == ["serve"]
    user = values["USER"].split(":")[0]
    run_as = only(rendered, "Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user.isdigit() and int(user) == run_as != 0, "numeric, so runAsNonRoot can be verified"
    assert any(i == "RUN" and "pip install ." in a for i, a in steps)
    for instruction, args in steps:
        if instruction == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context (the repository root)"
    ignored = (DEPLOYMENTS / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:] for line in ignored if line.startswith("!")}
    copied = {s for i, a in steps if i == "COPY" for s in a.split()[:-1]}
    assert copied <= kept, f"the .dockerignore drops {copied - kept}"


# --- the work pool ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_yaml() -> Obj:
    data = yaml.safe_load((WORK_POOL / "prefect.yaml").read_text())
    assert isinstance(data, dict)
    return data


def deployment(prefect_yaml: Obj, name: str) -> Obj:
    (found,) = [d for d in prefect_yaml["deployments"] if d["name"] == name]
    return found


ENTRYPOINTS = {
    "policy-watch": "flows/poll.py:poll_reports",
    "handle-violation": "flows/handle_violation.py:handle_violation",
    "handle-violations": "flows/handle_violations.py:handle_violations",
    "retry-failed-triggers": "flows/retry_failed.py:retry_failed_triggers",
}


@pytest.mark.parametrize(("name", "entrypoint"), ENTRYPOINTS.items())
def test_prefect_yaml_deploys_each_flow_to_the_pool(prefect_yaml: Obj, name: str, entrypoint: str) -> None:
    spec = deployment(prefect_yaml, name)
    assert spec["entrypoint"] == entrypoint
    assert spec["work_pool"]["name"] == "policyflow-k8s"
    path, function = entrypoint.split(":")
    assert (ROOT / path).is_file(), f"{path} does not exist"
    tree = ast.parse((ROOT / path).read_text())
    flows = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
             and any("flow" in ast.unparse(d) for d in node.decorator_list)}
    assert function in flows, f"{path} defines no flow {function}"


def test_prefect_yaml_schedules_policy_watch_once_a_minute_one_at_a_time(prefect_yaml: Obj) -> None:
    assert {d["name"] for d in prefect_yaml["deployments"]} == set(ENTRYPOINTS)
    watch = deployment(prefect_yaml, "policy-watch")
    assert watch["schedules"] == [{"interval": 60}]
    assert watch["concurrency_limit"] == 1
    (pull,) = prefect_yaml["pull"]
    workdir = dict(dockerfile())["WORKDIR"]
    assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": workdir}}, \
        "the entrypoints resolve in the image's WORKDIR"


@pytest.fixture(scope="module")
def job_template() -> Obj:
    data = json.loads((WORK_POOL / "base-job-template.json").read_text())
    assert isinstance(data, dict)
    return data


def rendered_job(job_template: Obj) -> Obj:
    """The Job the worker would create, rendered from the variables' defaults the way Prefect does."""
    from prefect.utilities.templating import apply_values  # only here: Prefect takes a second to import

    values = {name: spec["default"] for name, spec in job_template["variables"]["properties"].items()
              if spec.get("default") is not None}
    values.update(name="policy-watch-1", command="prefect flow-run execute")
    configuration = apply_values(job_template["job_configuration"], values)
    job: Obj = configuration["job_manifest"]
    c = container(job["spec"]["template"]["spec"])
    c["args"] = shlex.split(c["args"])  # as the worker does with the command
    # The worker puts these two in the pod spec (and refuses a template without them); Kubernetes
    # drops them there as unknown fields. Not ours to fix; leave them out of the strict check.
    for quirk in ("parallelism", "completions"):
        job["spec"]["template"]["spec"].pop(quirk)
    return job


def test_the_job_template_uses_the_kustomization_s_account_namespace_and_secret(
    job_template: Obj, rendered: list[Obj]
) -> None:
    defaults = {k: v.get("default") for k, v in job_template["variables"]["properties"].items()}
    account = only(rendered, "ServiceAccount")["metadata"]
    assert defaults["namespace"] == account["namespace"] == "policyflow"
    assert defaults["service_account_name"] == account["name"] == "policyflow"
    assert defaults["image"] == "ghcr.io/example/policyflow:0.1.0"
    assert defaults["env"]["POLICYFLOW_TESTKUBE_URL"] == "http://testkube-api-server.testkube:8088"
    assert not any("TOKEN" in name.upper() for name in defaults["env"]), "the token comes from the Secret"
    spec = rendered_job(job_template)["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "policyflow"
    c = container(spec)
    assert_token_only_from_secret(c, "policyflow-testkube", "token", "base job template")
    assert_locked_down(spec, "base job template")
    assert {"/tmp", defaults["env"]["PREFECT_HOME"]} <= writable_mounts(spec)
    name, key = config_source(spec, env_of(c)["POLICYFLOW_CONFIG"]["value"])
    assert key in only(rendered, "ConfigMap", name)["data"]
    assert c["command"] == ["/usr/bin/env"], "runs the worker's `prefect flow-run execute`, not policyflow"


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_job_from_the_template_is_valid_kubernetes(job_template: Obj, version: str) -> None:
    kubernetes_validate.validate(rendered_job(job_template), version, strict=True)


# --- the examples --------------------------------------------------------------------------------


def test_the_policy_is_a_byte_for_byte_copy_of_the_contract() -> None:
    ours = (OUR_EXAMPLES / "require-resources-policy.yaml").read_bytes()
    assert ours == (EXAMPLES / "require-resources-policy.yaml").read_bytes()


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected (what ``kubectl apply`` does with field validation
    Strict): every object with ``properties`` and no ``additionalProperties`` or
    ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: (value if key in ("enum", "default", "required") else strict(value))
           for key, value in schema.items() if key != "properties"}
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def testworkflow_crd() -> Obj:
    crd = yaml.safe_load((CRDS / "testworkflows.testkube.io_testworkflows.yaml").read_text())
    assert isinstance(crd, dict)
    return crd


@pytest.fixture(scope="module")
def testworkflow_validator(testworkflow_crd: Obj) -> jsonschema.Draft202012Validator:
    (version,) = [v for v in testworkflow_crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def smoke_nova() -> Obj:
    data = yaml.safe_load((OUR_EXAMPLES / "smoke-nova-testworkflow.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_smoke_nova_is_a_valid_testworkflow(
    smoke_nova: Obj, testworkflow_crd: Obj, testworkflow_validator: jsonschema.Draft202012Validator
) -> None:
    names = testworkflow_crd["spec"]["names"]
    served = {f"{testworkflow_crd['spec']['group']}/{v['name']}" for v in testworkflow_crd["spec"]["versions"]
              if v.get("served")}
    assert smoke_nova["apiVersion"] in served and smoke_nova["apiVersion"] == "testworkflows.testkube.io/v1"
    assert smoke_nova["kind"] == names["kind"]
    assert testworkflow_crd["spec"]["scope"] == "Namespaced"
    assert (smoke_nova["metadata"]["name"], smoke_nova["metadata"]["namespace"]) == ("smoke-nova", "testkube")
    errors = sorted(testworkflow_validator.iter_errors(smoke_nova), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_testworkflow_check_rejects_unknown_fields(
    smoke_nova: Obj, testworkflow_validator: jsonschema.Draft202012Validator
) -> None:
    broken = copy.deepcopy(smoke_nova)
    broken["spec"]["steps"][0]["run"]["shel"] = "curl"
    assert not testworkflow_validator.is_valid(broken)


def test_smoke_nova_curls_its_url_parameter(smoke_nova: Obj) -> None:
    spec = smoke_nova["spec"]
    assert spec["config"]["url"]["type"] == "string"
    assert spec["config"]["url"]["default"] == SEED_URL
    (step,) = spec["steps"]
    run = step["run"]
    assert run["image"].startswith("curlimages/curl:")
    assert run["command"] + run["args"] == ["curl", "-fsS", "--max-time", "10", "{{config.url}}"]


def test_the_example_routing_sends_the_seed_violation_to_smoke_nova(smoke_nova: Obj, clean_env: None) -> None:
    _, routing = settings_module.load({"config": OUR_EXAMPLES / "routing.yaml"})
    routed = routing.route(seed_violation())
    assert routed is not None
    assert routed.workflow == "smoke-nova" == smoke_nova["metadata"]["name"]
    assert routed.config == {"url": SEED_URL}
    assert routed.config.keys() <= smoke_nova["spec"]["config"].keys(), "only parameters the workflow declares"


def test_the_example_routing_is_the_one_in_the_config_map(rendered: list[Obj]) -> None:
    example_routes = yaml.safe_load((OUR_EXAMPLES / "routing.yaml").read_text())
    in_cluster = yaml.safe_load(only(rendered, "ConfigMap", "policyflow-config")["data"]["policyflow.yaml"])
    assert example_routes == in_cluster
