"""The lifecycle journal's store: ConfigMaps ``policyflow-journal-<0..f>`` in policyflow's namespace.

Why there (the README's "Policy health" says it for people): the journal must outlive the reports
(Kyverno deletes them) and a policyflow restart, and ``policyflow health`` must read it without a
Prefect server (whose events expire after 7 days by default, and whose database a team may lose). The
cluster already holds the records; 16 ConfigMaps in policyflow's own namespace need only a Role there.

Each transition is one merge-patch of one ConfigMap (adding keys, never read first). A failed write
is logged and dropped: the journal never decides anything, so it never fails a chain either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from policyflow.clients.kube import AlreadyExists, KubeClient
from policyflow.domain.errors import ForbiddenError, NotFoundError, PolicyflowError
from policyflow.domain.journal import (
    SHARD_PREFIX,
    Identity,
    Journal,
    decode,
    opened_entries,
    outcome_entries,
    prune_entries,
    resolved_entries,
    shard_name,
)
from policyflow.domain.ledger import Record
from policyflow.domain.model import DEFAULT_CLUSTER
from policyflow.retry import RetryPolicy

log = logging.getLogger("policyflow.journal")

SELECTOR = "app.kubernetes.io/component=policyflow-journal"
_LABELS = {"app.kubernetes.io/managed-by": "policyflow", "app.kubernetes.io/component": "policyflow-journal"}


def identity_of(record: Record, namespace: str | None, cluster: str = DEFAULT_CLUSTER) -> Identity:
    return Identity(record.policy, record.rule, namespace or "", record.resource, record.workflow or "", cluster)


class JournalStore:
    """Reads and writes the journal in ``namespace`` (of the home cluster, ``kube``), on behalf of
    the violations of ``cluster``: with several clusters, one journal holds them all, each entry
    naming its cluster (:meth:`for_cluster`)."""

    def __init__(self, kube: KubeClient, *, namespace: str, retry: RetryPolicy,
                 cluster: str = DEFAULT_CLUSTER) -> None:
        self.kube = kube
        self.namespace = namespace
        self.retry = retry
        self.cluster = cluster
        self.refused = False

    def for_cluster(self, cluster: str) -> JournalStore:
        """The same journal, writing the episodes of ``cluster``'s violations."""
        return self if cluster == self.cluster else JournalStore(self.kube, namespace=self.namespace,
                                                                 retry=self.retry, cluster=cluster)

    def read(self) -> Journal:
        """The whole journal (one LIST); empty, with the problem noted, when it cannot be read."""
        try:
            return decode(self.read_shards().values())
        except PolicyflowError as exc:
            journal = Journal()
            journal.problems.append(f"the lifecycle journal cannot be read: {exc}")
            return journal

    def read_shards(self) -> dict[str, dict[str, str]]:
        """Each shard's ``data`` by ConfigMap name (one LIST)."""
        shards = self.kube.list_config_maps(self.namespace, label_selector=SELECTOR)
        return {name: dict(s.get("data") or {}) for s in shards
                if (name := str((s.get("metadata") or {}).get("name", ""))).startswith(SHARD_PREFIX)}

    def opened(self, record: Record, namespace: str | None) -> None:
        """The record's episode opened (detected at ``record.detected``)."""
        when = record.detected or record.updated
        self._write(record.key, opened_entries(record.key, identity_of(record, namespace, self.cluster),
                                                     record.episode_id, when))

    def finished(self, record: Record) -> None:
        """The record's episode ended with ``record.status``."""
        self._write(record.key, outcome_entries(record.key, record.episode_id, record.status,
                                               record.finished or record.updated))

    def resolved(self, key: str, tag: str, when: str) -> None:
        self._write(key, resolved_entries(key, tag, when))

    def prune(self, shards: Mapping[str, Mapping[str, str]], *, now: datetime, retention: timedelta) -> int:
        """Drop what retention and the size budget no longer keep from ``shards`` (as read this cycle):
        one write per shard that changes; the number of episodes dropped."""
        dropped = 0
        for name, data in sorted(shards.items()):
            patch = prune_entries(data, now=now, retention=retention)
            if patch:
                self._write_shard(name, patch)
                dropped += sum(1 for k in patch if k.count(".") == 2 and k.endswith(".o"))
        return dropped

    def _write(self, key: str, entries: Mapping[str, str | None]) -> None:
        self._write_shard(shard_name(key), entries)

    def _write_shard(self, name: str, entries: Mapping[str, str | None]) -> None:
        if self.refused:
            return
        try:
            self.retry.run_sync(lambda: self._patch(name, entries), what="journal write", log=log)
        except PolicyflowError as exc:
            if isinstance(exc, ForbiddenError):
                self.refused = True  # no Role for ConfigMaps here: say it once, not per violation
            log.warning("lifecycle journal not written (%s); health figures will miss this transition", exc)

    def _patch(self, name: str, entries: Mapping[str, str | None]) -> None:
        try:
            self.kube.patch_config_map_data(self.namespace, name, entries)
        except NotFoundError:
            body = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": self.namespace, "labels": _LABELS},
                    "data": {k: v for k, v in entries.items() if v is not None}}
            try:
                self.kube.create_config_map(body)
            except AlreadyExists:  # created by another process in between: merge into theirs
                self.kube.patch_config_map_data(self.namespace, name, entries)
