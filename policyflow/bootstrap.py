"""The composition root: settings, routes, clients, the record store, the clock, this process's
owner id, the retry policy and the Prefect observer, built once at the edge and handed down.

The CLI builds the dependencies and :func:`install`\\ s them for the flows it runs in-process. A flow
is also started by Prefect in a process of its own (a served run, a worker's job), where nobody can
hand it anything: :func:`for_flows` then builds them from ``POLICYFLOW_*`` and the config file, once
per process. That lookup is the only process-level state, and only flow entry points read it.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from typing import cast

from policyflow import settings as settings_module
from policyflow.chain.deps import Deps, Observer, TestkubeClients
from policyflow.clients.kube import KubeClient
from policyflow.clock import Clock
from policyflow.domain.errors import ConfigError
from policyflow.domain.routing import RoutingTable
from policyflow.journal import JournalStore
from policyflow.liveness import ProcessLease
from policyflow.records import RecordStore
from policyflow.settings import ClusterSpec, Settings
from tasks.observe import PrefectObserver


def owner_id() -> str:
    """Who writes in-flight records from this process (host:pid:nonce; see ``Record.owner``)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def build(settings: Settings, routing: RoutingTable, *, kube: KubeClient | None = None,
          kubes: Mapping[str, KubeClient] | None = None, clock: Clock | None = None,
          observer: Observer | None = None) -> Deps:
    """Everything the chains, tasks and flows of this process need (ConfigError when the settings
    cannot be made into it): one :class:`Deps` per configured cluster, joined; the home cluster's
    (the first) is answered. ``kube`` (the home cluster's) and ``kubes`` (by cluster name) replace
    clients that would be connected from the settings.

    Nothing here needs a cluster to answer: one that is down when the process starts is a problem of
    that cluster's cycles, not a reason not to serve the others.
    """
    clock = clock if clock is not None else Clock()
    retry = settings.retry_policy()
    owner = owner_id()
    observer = observer if observer is not None else PrefectObserver()
    specs = settings.cluster_specs()
    given = dict(kubes or {})
    if kube is not None:
        given.setdefault(specs[0].name, kube)
    built: list[Deps] = []
    journal: JournalStore | None = None
    try:
        for spec in specs:
            own = settings.for_cluster(spec)
            client = given.get(spec.name) or KubeClient.connect(**own.kube_options(), in_cluster=spec.in_cluster)
            if journal is None:  # one journal, in the home cluster, for every cluster's episodes
                journal = JournalStore(client, namespace=settings.journal_namespace, retry=retry)
            lease = ProcessLease(client, owner=owner, namespace=own.lease_namespace, duration=own.lease_duration,
                                 clock=clock)
            built.append(Deps(
                settings=own,
                routing=routing,
                kube=client,
                records=RecordStore(client, owner=owner, clock=clock, retry=retry),
                testkube=TestkubeClients(own, functools.cache(functools.partial(_testkube_token, settings, spec))),
                clock=clock,
                owner=owner,
                retry=retry,
                observer=observer,
                lease=lease,  # taken by the first chain in this cluster (Deps.take_lease)
                journal=journal.for_cluster(spec.name),
                cluster=spec.name,
            ))
    except BaseException:
        for deps in built:
            deps.close()
        raise
    return Deps.joined(built)


def _testkube_token(settings: Settings, spec: ClusterSpec) -> str | None:
    """The Testkube token of ``spec``'s target: its own reference when it has one, else the top-level
    token (or block). Read at the edge, once, when its first client is made."""
    if spec.testkube_token_env:
        token = os.environ.get(spec.testkube_token_env)
        if not token:
            raise ConfigError(f"cluster {spec.name}: testkube_token_env {spec.testkube_token_env} is not set "
                              "in the environment")
        return token
    if spec.testkube_token_block:
        return _load_secret_block(spec.testkube_token_block)
    if settings.testkube_token is not None:
        return settings.testkube_token.get_secret_value()
    if settings.testkube_token_block:
        return _load_secret_block(settings.testkube_token_block)
    return None


def _load_secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        block = cast("Secret[str]", Secret.load(name, _sync=True))  # type: ignore[call-arg]
    except ValueError:
        raise ConfigError(
            f"Prefect Secret block {name!r} not found: create it (prefect block create secret) or fix "
            "POLICYFLOW_TESTKUBE_TOKEN_BLOCK"
        ) from None
    return str(block.get())


_lock = threading.Lock()
_installed: Deps | None = None


def install(deps: Deps | None) -> None:
    """Make ``deps`` what this process's flows use (None: build from the environment next time)."""
    global _installed
    with _lock:
        _installed = deps


def for_flows() -> Deps:
    """The dependencies of a flow run in this process: those the CLI installed, else built from
    ``POLICYFLOW_*`` and the config file on first use (a served or deployed run)."""
    global _installed
    with _lock:
        if _installed is None:
            # A process Prefect started (a served or deployed run): nobody set policyflow's log level,
            # and Prefect's root is WARNING; the run's story (INFO) belongs in its Logs tab.
            if logging.getLogger("policyflow").level == logging.NOTSET:
                logging.getLogger("policyflow").setLevel(logging.INFO)
            _installed = build(*settings_module.load())
            atexit.register(_installed.close)  # a served run's process: its Lease goes with it
        return _installed
