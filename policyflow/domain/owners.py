"""Which policyflow processes are alive (pure): one ``coordination.k8s.io`` Lease per process, renewed
every few seconds, the way Kubernetes' own components hold theirs.

An in-flight record names the process that owns its chain (``Record.owner``). While that process's
Lease is current, other processes leave the record alone; once the Lease has expired or is gone (the
process crashed, or stopped cleanly and deleted it), the record is free at once. The cost is a write
per process every few seconds, not a write per in-flight chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

LEASE_PREFIX = "policyflow-owner-"
MANAGED_BY = ("app.kubernetes.io/managed-by", "policyflow")
#: Selects policyflow's owner Leases among the namespace's others.
LEASE_SELECTOR = f"{MANAGED_BY[0]}={MANAGED_BY[1]},app.kubernetes.io/component=owner"


def lease_name(owner: str) -> str:
    """The Lease of ``owner`` (a DNS name: owner ids hold ``:``, so a digest names it)."""
    return LEASE_PREFIX + hashlib.sha256(owner.encode("utf-8")).hexdigest()[:16]


def micro_time(when: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_micro_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def lease_object(owner: str, *, namespace: str, duration: float, now: datetime, acquired: datetime | None = None,
                 resource_version: str | None = None) -> dict[str, Any]:
    """``owner``'s Lease, renewed ``now`` (``resource_version``: replace exactly that version)."""
    metadata: dict[str, Any] = {
        "name": lease_name(owner),
        "namespace": namespace,
        "labels": {MANAGED_BY[0]: MANAGED_BY[1], "app.kubernetes.io/component": "owner"},
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": owner,
            "leaseDurationSeconds": max(round(duration), 1),
            "acquireTime": micro_time(acquired or now),
            "renewTime": micro_time(now),
        },
    }


def current_holder(lease: Mapping[str, Any], now: datetime) -> str | None:
    """Who holds ``lease`` now: its holder while ``renewTime + leaseDurationSeconds`` is ahead of
    ``now``, else nobody (it expired)."""
    spec = lease.get("spec") if isinstance(lease.get("spec"), Mapping) else None
    if not spec:
        return None
    holder, renewed, duration = spec.get("holderIdentity"), _parse_micro_time(spec.get("renewTime")), \
        spec.get("leaseDurationSeconds")
    if not isinstance(holder, str) or renewed is None or not isinstance(duration, int):
        return None
    return holder if renewed + timedelta(seconds=duration) > now else None


def live_owners(leases: Iterable[Mapping[str, Any]], now: datetime) -> frozenset[str]:
    """The owners whose Leases are current."""
    return frozenset(h for lease in leases if (h := current_holder(lease, now)) is not None)
