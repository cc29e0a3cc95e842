"""Settings: ``POLICYFLOW_*`` environment variables, the YAML config file, and CLI flags.

Precedence, highest first: CLI flags, environment variables, the config file, defaults. The config
file (``--config`` / ``POLICYFLOW_CONFIG``) holds ``routes:`` and may set any setting below by its
field name (``namespaces:``, ``await_timeout:``...). Anything invalid stops before any work with
:class:`ConfigError`, one line per problem, naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from policyflow.domain.errors import ConfigError, one_line
from policyflow.domain.model import CLUSTER_NAME, DEFAULT_CLUSTER, ResultKind, Source
from policyflow.domain.reports import ViolationFilter
from policyflow.domain.routing import Route, RoutingTable
from policyflow.retry import RetryPolicy

CommaList = Annotated[tuple[str, ...], NoDecode]


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    """The pod's namespace in a cluster (its service account says), else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class ClusterSpec(BaseModel):
    """One cluster of ``clusters:``: how to reach it, which of its namespaces to read, and (when it
    has its own) its Testkube target. What it leaves unset is the top-level setting's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="DNS label naming the cluster in keys, tags, run names and metrics")
    kubeconfig: Path | None = Field(default=None, description="kubeconfig file (default: the top-level kubeconfig)")
    context: str | None = Field(default=None, description="kubeconfig context")
    in_cluster: bool = Field(default=False, description="the service account of the pod policyflow runs in")
    namespaces: CommaList = Field(default=(), description="Only reports in these namespaces (default: the top-level)")
    exclude_namespaces: CommaList = Field(default=(), description="Never these namespaces (default: the top-level)")
    testkube_url: AnyHttpUrl | None = Field(default=None, description="Its own Testkube: the agent or Cloud API")
    testkube_org: str | None = Field(default=None, description="Its own Testkube Cloud organization")
    testkube_env: str | None = Field(default=None, description="Its own Testkube Cloud environment (runner target)")
    testkube_token_env: str | None = Field(default=None, description="Environment variable holding its Testkube token")
    testkube_token_block: str | None = Field(default=None, description="Prefect Secret block of its token")

    _split_lists = field_validator("namespaces", "exclude_namespaces", mode="before")(_split)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not CLUSTER_NAME.fullmatch(value):
            raise ValueError(f"{one_line(repr(value), 70)} is not a cluster name: use a DNS label (lower-case "
                             "letters, digits and '-', at most 63, e.g. prod-eu)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        if self.in_cluster and (self.kubeconfig or self.context):
            raise ValueError(f"cluster {self.name}: in_cluster excludes kubeconfig and context; give one or the other")
        if self.testkube_token_env and self.testkube_token_block:
            raise ValueError(f"cluster {self.name}: give testkube_token_env or testkube_token_block, not both")
        if self.testkube_url and bool(self.testkube_org) != bool(self.testkube_env):
            raise ValueError(f"cluster {self.name}: with its own testkube_url, set both testkube_org and "
                             "testkube_env (Cloud) or neither (agent)")
        return self

    @property
    def own_testkube(self) -> bool:
        """Whether it names a Testkube target of its own (else the top-level one)."""
        return bool(self.testkube_url or self.testkube_org or self.testkube_env)


class Settings(BaseSettings):
    """Everything policyflow can be told. Each field is also ``POLICYFLOW_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="POLICYFLOW_", extra="forbid", frozen=True, allow_inf_nan=False)

    # --- Testkube -------------------------------------------------------------------------------
    testkube_url: AnyHttpUrl | None = Field(
        None, description="Testkube API: the agent (http://testkube-api-server.testkube:8088) or Cloud host"
    )
    testkube_org: str | None = Field(None, description="Testkube Cloud/Pro organization id (tkcorg_...)")
    testkube_env: str | None = Field(None, description="Testkube Cloud/Pro environment id (tkcenv_...)")
    testkube_token: SecretStr | None = Field(None, description="Bearer token for Testkube (Cloud/Pro)")
    testkube_token_block: str | None = Field(
        None, description="Name of a Prefect Secret block holding the Testkube token"
    )
    testkube_ca_file: Path | None = Field(None, description="CA bundle to verify Testkube's TLS certificate")
    testkube_insecure: bool = Field(False, description="Skip TLS verification for Testkube (never in production)")
    testkube_timeout: float = Field(15.0, gt=0, description="Seconds per Testkube HTTP request")
    testkube_dashboard_url: str | None = Field(
        None, description="Testkube dashboard base URL for execution links (Cloud: derived from org/env)"
    )
    testkube_concurrency: int = Field(
        50, ge=1, le=10000, description="Global concurrency limit on starting Testkube runs (Prefect limit)"
    )
    default_workflow: str | None = Field(None, description="Catch-all route: the TestWorkflow for any violation")

    # --- Cluster --------------------------------------------------------------------------------
    kubeconfig: Path | None = Field(
        None, description="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    context: str | None = Field(None, description="kubeconfig context")
    kube_ca_file: Path | None = Field(
        None, description="CA bundle to verify the API server (overrides the kubeconfig's; TLS is always verified)"
    )
    namespaces: CommaList = Field((), description="Only reports in these namespaces (globs)")
    exclude_namespaces: CommaList = Field((), description="Never reports in these namespaces (globs)")
    cluster_reports: bool = Field(True, description="Read cluster-scoped reports too")
    report_selector: str = Field(
        "app.kubernetes.io/managed-by=kyverno", description="Label selector for reports (empty: all)"
    )
    policies: CommaList = Field((), description="Only these policies (globs)")
    results: CommaList = Field(("fail",), description="Result kinds that are violations: fail, error, warn")
    severities: CommaList = Field((), description="Only these severities (critical, high, medium, low, info)")
    page_size: int = Field(500, ge=1, le=10000, description="Reports per LIST page")
    sources: Annotated[tuple[Source, ...], NoDecode] = Field(
        (), description="Where violations come from: kyverno (policy reports), gatekeeper (OPA Gatekeeper "
        "constraints); empty: every source whose CRDs the cluster serves"
    )
    track_resource_changes: bool = Field(
        True, description="A still-failing resource whose generation changed is a new violation"
    )

    # --- The chain ------------------------------------------------------------------------------
    await_timeout: float = Field(1800.0, gt=0, description="Seconds to wait for a test's result")
    await_unreachable: float = Field(
        300.0, gt=0,
        description="Seconds of consecutive failures polling an execution before await-result fails (its Retry "
        "waits on the same execution)",
    )
    poll_interval: float = Field(2.0, gt=0, description="First wait between execution polls (backs off)")
    poll_interval_max: float = Field(30.0, gt=0, description="Longest wait between execution polls")
    retries: int = Field(4, ge=0, le=20, description="Retries of a step after a transient error")
    retry_delay: float = Field(2.0, ge=0, description="First retry delay in seconds (doubles, with jitter)")
    max_concurrent_chains: int = Field(16, ge=1, le=1000, description="Chains run at once in one cycle")
    storm_threshold: int = Field(
        50, ge=0, le=1_000_000,
        description="A cycle with more new chains than this runs them in handle-violations batches (0: always)",
    )
    cluster_timeout: float = Field(
        300.0, gt=0,
        description="Seconds one cluster's detection may take (retries included) before the cycle reports it "
        "down and goes on with the others",
    )
    batch_size: int = Field(250, ge=1, le=1000, description="Violations per handle-violations run in a storm")
    chain_dispatch: Literal["inline", "submit"] = Field(
        "inline",
        description="inline: a cycle runs its violations' runs itself; submit: it schedules them as deployment "
        "runs for every served process or worker to pick up (scale-out)",
    )
    claim_lease: float = Field(
        300.0, gt=0,
        description="Without Leases: seconds an unfinished chain's record is left to its owner before others resume it",
    )
    failure_log_lines: int = Field(
        20, ge=0, le=500, description="Last log lines of a failed test's failing step kept in its failure digest"
    )
    failure_log_max_bytes: int = Field(
        1 << 20, ge=1024, le=64 << 20,
        description="Bytes of a failed test's log read at most for its failure digest (the log's end)",
    )
    lease_namespace: str = Field(
        default_factory=lambda: _own_namespace(), description="Namespace of the processes' liveness Leases"
    )
    lease_duration: float = Field(
        30.0, ge=3, le=3600, description="Seconds a process's liveness Lease lasts unrenewed (renewed every third)"
    )
    journal_namespace: str = Field(
        default_factory=lambda: _own_namespace(),
        description="Namespace of the lifecycle journal's ConfigMaps (policyflow-journal-*)",
    )
    journal_retention_days: float = Field(
        90.0, gt=0, le=3650, description="Days the lifecycle journal keeps an episode after its last change"
    )
    flip_window: int = Field(
        10, ge=2, le=100, description="Health: the last N tested episodes of a violation its flip rate looks at"
    )

    clusters: tuple[ClusterSpec, ...] = Field(
        (), description="Several clusters (config file): name, kubeconfig/context/in_cluster, namespace filters, "
        "its own Testkube target; none: one cluster, default, as the settings above say"
    )

    config: Path | None = Field(None, description="YAML config file with routes (and any setting)")

    _split_commas = field_validator("namespaces", "exclude_namespaces", "policies", "results", "severities",
                                    mode="before")(_split)

    @field_validator("clusters")
    @classmethod
    def _unique_clusters(cls, value: tuple[ClusterSpec, ...]) -> tuple[ClusterSpec, ...]:
        seen: set[str] = set()
        for spec in value:
            if spec.name in seen:
                raise ValueError(f"cluster {spec.name!r} is named twice: cluster names must be unique")
            seen.add(spec.name)
        return value

    @field_validator("sources", mode="before")
    @classmethod
    def _known_sources(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            known = [s.value for s in Source]
            for item in value:
                if item not in known:
                    raise ValueError(f"{str(item)[:60]!r} is not a source; use {' or '.join(known)}")
            return tuple(dict.fromkeys(value))
        return value

    @field_validator("results")
    @classmethod
    def _known_results(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = {k.value for k in ResultKind}
        for item in value:
            if item not in known:
                raise ValueError(f"{item!r} is not a result kind; use fail, error or warn")
        return value

    @field_validator("severities")
    @classmethod
    def _known_severities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = ("critical", "high", "medium", "low", "info")
        for item in value:
            if item not in known:
                raise ValueError(f"{item!r} is not a severity; use {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _cloud_pair(self) -> Settings:
        if bool(self.testkube_org) != bool(self.testkube_env):
            raise ValueError("set both testkube_org and testkube_env (Testkube Cloud/Pro) or neither (OSS agent)")
        return self

    def kube_options(self) -> dict[str, Any]:
        """How to reach the cluster, as ``KubeClient.connect`` takes it."""
        return {"kubeconfig": self.kubeconfig, "context": self.context, "ca_file": self.kube_ca_file}

    def cluster_specs(self) -> tuple[ClusterSpec, ...]:
        """The clusters to read: those of ``clusters:``, else one, ``default``, as the top-level
        settings describe it (a single-cluster configuration of before, unchanged)."""
        return self.clusters or (ClusterSpec(name=DEFAULT_CLUSTER),)

    def for_cluster(self, spec: ClusterSpec) -> Settings:
        """These settings as one cluster's chains see them: its connection, its namespace filters,
        its Testkube target (when it has one; its token is resolved by the composition root)."""
        update: dict[str, Any] = {"clusters": ()}
        if spec.in_cluster:
            update.update(kubeconfig=None, context=None)
        elif spec.kubeconfig or spec.context:
            update.update(kubeconfig=spec.kubeconfig or self.kubeconfig, context=spec.context)
        if spec.namespaces:
            update["namespaces"] = spec.namespaces
        if spec.exclude_namespaces:
            update["exclude_namespaces"] = spec.exclude_namespaces
        if spec.testkube_url:
            update.update(testkube_url=spec.testkube_url, testkube_org=spec.testkube_org,
                          testkube_env=spec.testkube_env)
        elif spec.own_testkube:
            update.update(testkube_org=spec.testkube_org or self.testkube_org,
                          testkube_env=spec.testkube_env or self.testkube_env)
        if spec.testkube_token_env or spec.testkube_token_block:
            update.update(testkube_token=None, testkube_token_block=spec.testkube_token_block)
        return self.model_copy(update=update)

    def retry_policy(self) -> RetryPolicy:
        """The one retry policy of steps and record writes, as these settings say."""
        return RetryPolicy(retries=self.retries, delay=self.retry_delay)

    def dashboard_url(self) -> str | None:
        """The Testkube dashboard base for links: explicit, else Testkube Cloud's for the org/env."""
        if self.testkube_dashboard_url:
            return self.testkube_dashboard_url
        if self.testkube_org and self.testkube_env:
            return (f"https://app.testkube.io/organization/{self.testkube_org}/environment/"
                    f"{self.testkube_env}/dashboard")
        return None

    def violation_filter(self) -> ViolationFilter:
        """The filters as the pure core wants them."""
        return ViolationFilter(
            namespaces=self.namespaces,
            exclude_namespaces=self.exclude_namespaces,
            policies=self.policies,
            results=frozenset(ResultKind(r) for r in self.results),
            severities=frozenset(self.severities),
            cluster_reports=self.cluster_reports,
        )


def _error_lines(exc: ValidationError, origin: str) -> list[str]:
    lines = []
    for error in exc.errors():
        where = one_line(".".join(str(p) for p in error["loc"]) or "(top level)", 120)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; see the configuration reference in the README)"
        lines.append(f"{origin}: {where}: {one_line(message)}")
    return lines


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"config file {path}: cannot read it ({exc.strerror}); check --config / POLICYFLOW_CONFIG"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}: {problem}{where}") from None
    if data is None:
        return {}
    if isinstance(data, dict):
        odd = [k for k in data if not isinstance(k, str)]
        if odd:
            raise ConfigError(
                f"config file {path}: {one_line(repr(odd[0]), 80)}: unknown setting (top-level keys are "
                "routes and setting names; see the configuration reference in the README)"
            )
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: the top level must be a mapping (routes:, settings...), not {type(data).__name__}"
        )
    return data


def load(overrides: dict[str, Any] | None = None) -> tuple[Settings, RoutingTable]:
    """Settings and routes from CLI ``overrides``, the environment and the config file.

    Raises :class:`ConfigError` with one line per problem, every problem at once (a bad setting does
    not hide a bad route).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        first = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError("\n".join(_error_lines(exc, "setting"))) from None
    if first.config is None:
        return first, RoutingTable(default_workflow=first.default_workflow)
    origin = f"config file {first.config}"
    file_values = _read_config_file(first.config)
    routes_data = file_values.pop("routes", None)
    file_values.pop("config", None)
    problems: list[str] = []

    class _WithFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=file_values))

    settings: Settings | None = None
    try:
        settings = _WithFile(**overrides)
    except ValidationError as exc:
        problems.extend(_error_lines(exc, origin))
    routes: list[Route] = []
    if routes_data is None:
        routes_data = []
    if not isinstance(routes_data, list):
        problems.append(f"{origin}: routes must be a list of routes, not {type(routes_data).__name__}")
        routes_data = []
    for index, item in enumerate(routes_data):
        try:
            routes.append(Route.model_validate(item))
        except ValidationError as exc:
            problems.extend(_error_lines(exc, f"{origin}: routes[{index}]"))
    if problems or settings is None:
        raise ConfigError("\n".join(problems))
    return settings, RoutingTable(routes=tuple(routes), default_workflow=settings.default_workflow)
