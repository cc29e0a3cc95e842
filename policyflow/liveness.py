"""Which policyflow processes are alive: this process's own Lease, held while it runs, and the
Leases of the others, read to tell a live owner's record from a dead one's (see ``domain.owners``).

Without permission to use Leases (an older RBAC), policyflow says so once and falls back to the age
of the record (``claim_lease``), whose owner then refreshes it while it waits.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from policyflow.clients.kube import AlreadyExists, KubeClient
from policyflow.clock import Clock
from policyflow.domain.errors import ConflictError, ForbiddenError, NotFoundError, PolicyflowError
from policyflow.domain.owners import LEASE_SELECTOR, current_holder, lease_name, lease_object, live_owners

log = logging.getLogger("policyflow.liveness")


class ProcessLease:
    """This process's Lease: taken when it starts, renewed every third of its duration in a thread,
    deleted when it stops cleanly (its records are then free at once)."""

    def __init__(self, kube: KubeClient, *, owner: str, namespace: str, duration: float, clock: Clock) -> None:
        self.kube, self.owner, self.namespace, self.duration, self.clock = kube, owner, namespace, duration, clock
        self.name = lease_name(owner)
        self.held = False
        self._acquired = clock.now()
        self._version: str | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Take the Lease and keep it renewed; False (said once) when Leases cannot be used here."""
        try:
            self._write()
        except (ForbiddenError, NotFoundError) as exc:
            log.warning("no liveness Lease (%s): a crashed process's chains wait out claim_lease before others "
                        "resume them; grant leases in policyflow's Role (deployments/kubernetes)", exc)
            return False
        except PolicyflowError as exc:
            # The cluster does not answer now (one of several may be down when the process starts):
            # the renewal writes the Lease once it answers again.
            log.warning("liveness Lease %s not written yet (%s); renewing it until the cluster answers",
                        self.name, exc)
        self.held = True
        self._thread = threading.Thread(target=self._renew, name="policyflow-lease", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop renewing and delete the Lease (best effort: an undeleted one expires by itself)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            self.held = False
            try:
                self.kube.delete_lease(self.namespace, self.name)
            except PolicyflowError as exc:
                log.info("lease %s not deleted (%s); it expires in %.0f s", self.name, exc, self.duration)

    def _renew(self) -> None:
        while not self._stopped.wait(self.duration / 3):
            try:
                self._write()
            except PolicyflowError as exc:
                log.warning("could not renew lease %s: %s", self.name, exc)

    def _write(self) -> None:
        lease = lease_object(self.owner, namespace=self.namespace, duration=self.duration, now=self.clock.now(),
                             acquired=self._acquired, resource_version=self._version)
        try:
            written = self.kube.replace_lease(lease) if self._version else self.kube.create_lease(lease)
        except (AlreadyExists, ConflictError, NotFoundError):
            # Someone else wrote it (or it was deleted): take it as it is now, or create it afresh.
            try:
                self._version = str(self.kube.get_lease(self.namespace, self.name)["metadata"]["resourceVersion"])
            except NotFoundError:
                self._version = None
            lease = lease_object(self.owner, namespace=self.namespace, duration=self.duration, now=self.clock.now(),
                                 acquired=self._acquired, resource_version=self._version)
            written = self.kube.replace_lease(lease) if self._version else self.kube.create_lease(lease)
        self._version = str((written.get("metadata") or {}).get("resourceVersion") or "") or None


def read_live_owners(kube: KubeClient, namespace: str, now: datetime) -> frozenset[str] | None:
    """The owners whose Lease is current (one LIST), or None when Leases cannot be read here."""
    try:
        return live_owners(kube.list_leases(namespace, label_selector=LEASE_SELECTOR), now)
    except (ForbiddenError, NotFoundError):
        return None


def owner_is_alive(kube: KubeClient, namespace: str, owner: str, now: datetime) -> frozenset[str] | None:
    """``{owner}`` when its Lease is current, ``{}`` when expired or gone (one GET); None when Leases
    cannot be read here."""
    try:
        lease = kube.get_lease(namespace, lease_name(owner))
    except NotFoundError:
        return frozenset()
    except ForbiddenError:
        return None
    return frozenset({owner}) if current_holder(lease, now) == owner else frozenset()
