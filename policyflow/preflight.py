"""``policyflow check``: a preflight of everything a cycle needs, one line per check.

Each line starts with ``✓`` (fine), ``✗`` (a required check failed; the line says what to fix) or
``!`` (an optional check failed: policyflow works, with less). The command exits 0 when every
required check passed, else 1. What is checked, in order:

* the Prefect API that ``PREFECT_API_URL`` names answers ``/health`` (without importing Prefect, which
  costs seconds; read from the environment, else from the active Prefect profile);
* the cluster answers (``GET /version``);
* the report CRDs are served: one missing group is ``!`` (Kyverno writes one of the two), both
  missing is ``✗`` (not asked when ``sources`` leaves kyverno out);
* Gatekeeper's constraint kinds are served: asked when ``sources`` is empty or names gatekeeper, a
  line only when they are there or named (then missing is ``✗``);
* every permission of :func:`policyflow.domain.permissions.needed` is allowed, as a
  SelfSubjectAccessReview answers (permissions on report kinds policyflow will not read, because the
  CRD is not served or ``cluster_reports`` is off, are optional; those on constraints are asked only
  when Gatekeeper is served, and required only when ``sources`` names gatekeeper);
* Testkube answers a GET that needs the token (``401``: the token is refused);
* every TestWorkflow the routes name (templated names are known only per violation) exists.

With several clusters (``clusters:``), the Prefect API and the top-level Testkube target (when a
cluster uses it) are checked once, then each cluster gets a block: a ``cluster <name>`` heading and
its own lines (it answers, its CRDs, its permissions as a SelfSubjectAccessReview to that cluster
answers, and its own Testkube target when it has one). One cluster configured the old way prints as
it always did.

The token is never printed: it goes only into the Testkube client's headers.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from policyflow.clients.kube import KubeClient
from policyflow.clients.testkube import TestkubeClient, TestkubeUnavailable, TokenRefusedError
from policyflow.domain.errors import ConfigError, NotFoundError, PolicyflowError
from policyflow.domain.gatekeeper import CONSTRAINTS_GROUP, CONSTRAINTS_VERSION, constraint_kinds
from policyflow.domain.model import REPORT_KINDS, ReportKind, Source
from policyflow.domain.permissions import Permission, needed
from policyflow.domain.routing import RoutingTable
from policyflow.settings import ClusterSpec, Settings

OK, FAILED, OPTIONAL = "✓", "✗", "!"
#: Seconds for the Prefect health check and for each request to the cluster.
PREFECT_TIMEOUT = 5.0
KUBE_TIMEOUT = 10.0
RBAC_FILE = "deployments/kubernetes/rbac.yaml"
PREFECT_NOT_SET = "PREFECT_API_URL not set: flows would use a temporary local server"


@dataclass(frozen=True, slots=True)
class Check:
    """The result of one check. A failed optional check (``required=False``) does not fail the command."""

    name: str
    ok: bool
    required: bool = True
    detail: str = ""

    @property
    def mark(self) -> str:
        if self.ok:
            return OK
        return FAILED if self.required else OPTIONAL

    @property
    def fails(self) -> bool:
        """Whether this check makes ``policyflow check`` exit 1."""
        return self.required and not self.ok


def format_check(check: Check) -> str:
    """One line: the mark, the name, and the detail (which says what to fix when the check failed)."""
    return f"{check.mark} {check.name}" + (f": {check.detail}" if check.detail else "")


def exit_status(checks: Iterable[Check]) -> int:
    """0 when every required check passed, else 1."""
    return 1 if any(check.fails for check in checks) else 0


def summary(checks: Iterable[Check], *, failing_clusters: Sequence[str] = ()) -> str:
    """The last line: how many required checks failed (and in which clusters, when there are
    several) and how many optional ones."""
    checks = list(checks)
    failed = sum(1 for c in checks if c.fails)
    optional = sum(1 for c in checks if not c.ok and not c.required)
    head = f"{failed} required check{'s' if failed != 1 else ''} failed" if failed else "all required checks passed"
    if failed and failing_clusters:
        head += f" (cluster{'s' if len(failing_clusters) != 1 else ''} {', '.join(failing_clusters)})"
    return head + (f" ({optional} optional check{'s' if optional != 1 else ''} did not)" if optional else "")


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (what is safe to print), without a trailing slash."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")).rstrip("/")


# --- Prefect ----------------------------------------------------------------------------------------


def _prefect_profile(environ: Mapping[str, str]) -> Mapping[str, Any]:
    """The active Prefect profile's settings, read from ``profiles.toml`` as Prefect would (or {})."""
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    profiles = data.get("profiles")
    if not isinstance(profiles, dict):
        return {}
    profile = profiles.get(environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral")
    return profile if isinstance(profile, dict) else {}


def _prefect_setting(name: str, environ: Mapping[str, str], profile: Mapping[str, Any]) -> str | None:
    value = environ.get(name) or profile.get(name)
    return str(value) if value else None


def check_prefect(environ: Mapping[str, str] | None = None, *, timeout: float = PREFECT_TIMEOUT) -> Check:
    """Whether the Prefect API that ``PREFECT_API_URL`` names answers ``GET {url}/health``."""
    environ = os.environ if environ is None else environ
    profile = _prefect_profile(environ)
    url = _prefect_setting("PREFECT_API_URL", environ, profile)
    if not url:
        return Check("Prefect API", False, required=False, detail=PREFECT_NOT_SET)
    shown = safe_url(url)
    key = _prefect_setting("PREFECT_API_KEY", environ, profile)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    fix = "start the Prefect server or fix PREFECT_API_URL"
    try:
        verify: ssl.SSLContext | bool = True
        if (_prefect_setting("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", environ, profile) or "").lower() in ("1", "true"):
            verify = False
        elif cafile := _prefect_setting("PREFECT_API_SSL_CERT_FILE", environ, profile):
            verify = ssl.create_default_context(cafile=cafile)
        with httpx.Client(timeout=timeout, verify=verify, headers=headers, follow_redirects=False) as http:
            response = http.get(f"{url.rstrip('/')}/health")
    except httpx.TimeoutException:
        return Check("Prefect API", False, detail=f"{shown} did not answer within {timeout:g} s: {fix}")
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        return Check("Prefect API", False, detail=f"{shown} unreachable ({type(exc).__name__}): {fix}")
    if response.status_code in (401, 403):
        return Check("Prefect API", False,
                     detail=f"{shown} refused the API key ({response.status_code}): set a valid PREFECT_API_KEY")
    if not response.is_success:
        return Check("Prefect API", False, detail=f"GET {shown}/health answered {response.status_code}: is "
                     "PREFECT_API_URL the Prefect API (http://host:4200/api)?")
    return Check("Prefect API", True, detail=f"{shown} is healthy")


# --- the cluster ------------------------------------------------------------------------------------


def cluster_checks(settings: Settings, permissions: list[Permission] | None = None, *,
                   in_cluster: bool = False) -> Iterator[Check]:
    """The cluster answers, serves the report CRDs and allows ``permissions`` (default: all of them)."""
    try:
        kube = KubeClient.connect(**settings.kube_options(), in_cluster=in_cluster)
    except ConfigError as exc:
        yield Check("cluster", False, detail=str(exc))
        return
    kube.request_timeout = KUBE_TIMEOUT
    try:
        yield from _cluster_checks(kube, settings, needed() if permissions is None else permissions)
    finally:
        kube.close()


def _cluster_checks(kube: KubeClient, settings: Settings, permissions: list[Permission]) -> Iterator[Check]:
    server = safe_url(str(kube.api.configuration.host))
    try:
        version = kube.server_version()
    except PolicyflowError as exc:
        yield Check("cluster", False, detail=f"{exc}; check the kubeconfig (--kubeconfig/--context, "
                    f"POLICYFLOW_KUBECONFIG) and that {server} is reachable")
        return
    yield Check("cluster", True, detail=f"{server} answers (Kubernetes {version})")

    kyverno = not settings.sources or Source.KYVERNO in settings.sources
    kinds = [kind for kind in REPORT_KINDS if kyverno and (kind.namespaced or settings.cluster_reports)]
    served: dict[ReportKind, bool] = {}
    for kind in kinds:
        try:
            served[kind] = kube.is_served(kind)
        except PolicyflowError as exc:
            yield Check(f"CRD {kind.plural}.{kind.group}", False, detail=f"discovery failed: {exc}")
            return
    groups = {kind.group for kind, ok in served.items() if ok}
    for kind in kinds:
        name = f"CRD {kind.plural}.{kind.group}"
        if served[kind]:
            yield Check(name, True, detail=f"served ({kind.version})")
        elif groups:
            yield Check(name, False, required=False, detail=f"not served ({kind.api_version}); its reports are "
                        "skipped (install the CRD if Kyverno writes them)")
        else:
            yield Check(name, False, detail="not served, nor any other report kind: install Kyverno with its "
                        "report CRDs (wgpolicyk8s.io, or openreports.io with --openreportsEnabled)")

    try:
        gatekeeper = gatekeeper_check(kube, settings)
    except PolicyflowError as exc:
        yield Check(f"CRDs {CONSTRAINTS_GROUP}", False, detail=f"discovery failed: {exc}")
        return
    if gatekeeper is not None:
        yield gatekeeper
    read_constraints = gatekeeper is not None and gatekeeper.ok
    unread = {(kind.group, kind.plural) for kind in REPORT_KINDS if not served.get(kind, False)}
    for permission in permissions:
        if permission.group == CONSTRAINTS_GROUP:
            if not read_constraints:
                continue  # no constraints to read: not a question worth a line
            if Source.GATEKEEPER in settings.sources:
                permission = replace(permission, required=True)
        try:
            namespace = getattr(settings, permission.namespace_setting) if permission.own_namespace else None
            allowed = kube.access_review(verb=permission.verb, group=permission.group, resource=permission.resource,
                                         namespace=namespace)
        except PolicyflowError as exc:
            yield Check("permissions", False, detail=f"could not ask the cluster (SelfSubjectAccessReview): {exc}")
            return
        yield permission_check(permission, allowed, read=(permission.group, permission.resource) not in unread)


def gatekeeper_check(kube: KubeClient, settings: Settings) -> Check | None:
    """Whether Gatekeeper's constraints are served (None: not asked for, and not there: no line)."""
    if settings.sources and Source.GATEKEEPER not in settings.sources:
        return None
    document = kube.discover(f"{CONSTRAINTS_GROUP}/{CONSTRAINTS_VERSION}")
    name = f"CRDs {CONSTRAINTS_GROUP}"
    if document is None:
        if Source.GATEKEEPER not in settings.sources:
            return None
        return Check(name, False, detail=f"not served ({CONSTRAINTS_GROUP}/{CONSTRAINTS_VERSION}), but sources "
                     "names gatekeeper: install OPA Gatekeeper, or drop gatekeeper from sources")
    kinds = [kind.kind for kind in constraint_kinds(document)]
    listed = ", ".join(kinds) if kinds else "no constraint kinds yet (no ConstraintTemplate)"
    return Check(name, True, detail=f"served ({CONSTRAINTS_VERSION}): {listed}")


def permission_check(permission: Permission, allowed: bool, *, read: bool = True) -> Check:
    """The line for one permission. ``read``: policyflow reads this resource (a report kind whose CRD is
    not served, or a cluster report kind with ``cluster_reports`` off, is not read: then optional)."""
    name = f"RBAC {permission}"
    if allowed:
        return Check(name, True, detail="allowed")
    if permission.required and not read:
        return Check(name, False, required=False, detail="refused; not needed while policyflow does not read "
                     f"{permission.resource}")
    if permission.required:
        return Check(name, False, detail=f"refused (used for: {permission.why}): grant {permission.verb} on "
                     f"{permission.resource} in policyflow's ClusterRole ({RBAC_FILE})")
    role = "Role in its own namespace" if permission.own_namespace else "ClusterRole"
    return Check(name, False, required=False, detail=f"refused (used for: {permission.why}; optional): grant it in "
                 f"policyflow's {role} ({RBAC_FILE}) to have it")


# --- Testkube -------------------------------------------------------------------------------------


def routed_workflows(routing: RoutingTable) -> dict[str, list[str]]:
    """Every workflow a route names literally (no ``{`` placeholder), with the routes that name it."""
    found: dict[str, list[str]] = {}
    for index, route in enumerate(routing.routes):
        if "{" not in route.workflow and "}" not in route.workflow:
            found.setdefault(route.workflow, []).append(f"route {route.name or f'routes[{index}]'}")
    if routing.default_workflow:
        found.setdefault(routing.default_workflow, []).append("POLICYFLOW_DEFAULT_WORKFLOW")
    return found


async def testkube_checks(settings: Settings, routing: RoutingTable) -> AsyncIterator[Check]:
    """Testkube answers and accepts the token; every routed workflow exists."""
    if settings.testkube_url is None:
        yield Check("Testkube", False, detail="POLICYFLOW_TESTKUBE_URL is not set: point it at the Testkube API")
        return
    shown = safe_url(str(settings.testkube_url))
    token = settings.testkube_token.get_secret_value() if settings.testkube_token is not None else None
    if token is None and settings.testkube_token_block:
        yield Check("Testkube token", False, required=False,
                    detail=f"check does not read Prefect blocks: the token in {settings.testkube_token_block!r} "
                    "is not tried; asking Testkube without a token")
    async with TestkubeClient(url=str(settings.testkube_url), token=token, org=settings.testkube_org,
                              env=settings.testkube_env, timeout=settings.testkube_timeout,
                              ca_file=settings.testkube_ca_file, insecure=settings.testkube_insecure) as client:
        reachable = False
        try:
            workflows = await client.list_workflows()
        except TokenRefusedError:
            fix = "set a valid POLICYFLOW_TESTKUBE_TOKEN" if token else "it wants one: set POLICYFLOW_TESTKUBE_TOKEN"
            yield Check("Testkube", False, detail=f"token refused (401) by {shown}: {fix}")
        except TestkubeUnavailable as exc:
            yield Check("Testkube", False, detail=f"unreachable: {exc}; check POLICYFLOW_TESTKUBE_URL ({shown})")
        except NotFoundError:
            yield Check("Testkube", False, detail=f"{shown} has no TestWorkflow API (404): is POLICYFLOW_TESTKUBE_URL "
                        "the Testkube API (and POLICYFLOW_TESTKUBE_ORG/ENV right)?")
        except PolicyflowError as exc:
            yield Check("Testkube", False, detail=f"{exc} ({shown})")
        else:
            reachable = True
            auth = "token accepted" if token else "no token (OSS agent)"
            count = f"{len(workflows)} TestWorkflow{'s' if len(workflows) != 1 else ''}"
            yield Check("Testkube", True, detail=f"{shown} answers, {auth}, {count}")

        if routing.is_empty:
            yield Check("routes", False, detail="no route: set POLICYFLOW_DEFAULT_WORKFLOW or give routes in --config")
        if not reachable:
            return
        for workflow, origins in routed_workflows(routing).items():
            name = f"TestWorkflow {workflow}"
            try:
                exists = await client.workflow_exists(workflow=workflow)
            except PolicyflowError as exc:
                yield Check(name, False, detail=str(exc))
                continue
            if exists:
                yield Check(name, True, detail="exists")
            else:
                yield Check(name, False, detail=f"not found in Testkube: create it, or fix {', '.join(origins)}")


# --- the command ------------------------------------------------------------------------------------


def run_check(settings: Settings, routing: RoutingTable, *, write: Callable[[str], None] = print) -> int:
    """Run every check, writing one line per check as it completes and a summary; the exit status
    (1 when a required check of any cluster failed)."""
    checks: list[Check] = []
    failing: list[str] = []  # the clusters with a failed required check, when there are several
    indent = ""

    def emit(check: Check) -> None:
        checks.append(check)
        write(indent + format_check(check))

    def testkube(own: Settings) -> None:
        async def run() -> None:
            async for check in testkube_checks(own, routing):
                emit(check)

        asyncio.run(run())

    emit(check_prefect())
    specs = settings.cluster_specs()
    if len(specs) == 1:
        own = settings.for_cluster(specs[0]) if settings.clusters else settings
        for check in cluster_checks(own, in_cluster=specs[0].in_cluster):
            emit(check)
        testkube(_with_token(own, specs[0], emit))
    else:
        if any(not spec.own_testkube for spec in specs):
            testkube(settings)  # the shared target, once
        indent = "  "
        # The one journal lives in the home cluster (the first): the others are not asked for it.
        elsewhere = [p for p in needed() if p.namespace_setting != "journal_namespace"]
        for index, spec in enumerate(specs):
            write(f"cluster {spec.name}")
            before = len(checks)
            own = settings.for_cluster(spec)
            for check in cluster_checks(own, None if index == 0 else elsewhere, in_cluster=spec.in_cluster):
                emit(check)
            if spec.own_testkube:
                testkube(_with_token(own, spec, emit))
            if any(check.fails for check in checks[before:]):
                failing.append(spec.name)
        indent = ""
    write(summary(checks, failing_clusters=failing))
    return exit_status(checks)


def _with_token(own: Settings, spec: ClusterSpec, emit: Callable[[Check], None]) -> Settings:
    """``own`` (a cluster's settings) with the token its ``testkube_token_env`` names, read from the
    environment as serve would; an unset variable is a failed check (serve would refuse to start)."""
    if not spec.testkube_token_env:
        return own
    token = os.environ.get(spec.testkube_token_env)
    if not token:
        emit(Check("Testkube token", False, detail=f"testkube_token_env {spec.testkube_token_env} is not set "
                   "in the environment: set it, or fix the cluster's testkube_token_env"))
        return own
    return own.model_copy(update={"testkube_token": SecretStr(token)})
