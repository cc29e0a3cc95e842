"""A loopback stand-in for the Kubernetes API server (the part policyflow and its tests use).

It answers the official ``kubernetes`` Python client the way kube-apiserver v1.32 did in the recordings
under ``shared/specs/kube`` (see the checklist in its README), over real HTTP:

* Discovery (:mod:`.discovery`): ``/version``, ``/api``, ``/apis``, ``/apis/{group}[/{version}]``, with and
  without a trailing slash. Anything the server cannot route is ``404`` text/plain ``404 page not found``.
* Resources (:mod:`.resources`): custom resources from CRD YAMLs (every served version, scope from the
  CRD), core/v1 ``namespaces``, ``events``, ``pods``, apps/v1 ``deployments``, coordination.k8s.io/v1
  ``leases`` (:mod:`.lease`) and authorization.k8s.io/v1 ``selfsubjectaccessreviews``. CR bodies are
  pruned and validated against the structural schema (:mod:`.schema`, :mod:`.admission`).
* One global ``resourceVersion`` counter and a change history (:mod:`.store`); lists with
  ``limit``/``continue`` from a consistent snapshot, label/field selectors, ``resourceVersionMatch=Exact``
  (:mod:`.listing`, :mod:`.selectors`).
* Create/get/PUT/merge-patch/JSON-patch/delete with the real Status bodies (:mod:`.api`, :mod:`.patch`,
  :mod:`.errors`).
* The status subresource where a CRD declares one (Gatekeeper constraints, TestWorkflowExecutions):
  ``/status`` writes change only ``.status`` (no generation bump), writes to the object itself, creates
  included, ignore ``.status`` (:mod:`.store`). The report CRDs have none, as recorded.
* Watches (:mod:`.watch`): replay from a resourceVersion, initial ADDED events, watch-list end BOOKMARK,
  periodic and pre-timeout BOOKMARKs, ``ERROR`` 410 for a too-old version.
* Bearer-token authentication (401) and per-verb denials (403 with the RBAC message) (:mod:`.auth`);
  fault injection, dropped connections and the request log come from :mod:`policyflow.standins.http`.

Deliberate simplifications: no managedFields, no admission webhooks or controllers (deleting a
namespace removes its objects at once), no name or label-key syntax validation, strategic merge patch
on built-in kinds is applied as a JSON merge patch, server-side apply (``application/apply-patch+yaml``)
is a merge patch that may create the object (no field ownership), ``dryRun`` is not supported.
"""

from policyflow.standins.http import RecordedRequest
from policyflow.standins.kube.auth import DEFAULT_USER
from policyflow.standins.kube.errors import KubeApiError, status_body
from policyflow.standins.kube.listing import decode_continue, encode_continue
from policyflow.standins.kube.objects import strip_server_metadata
from policyflow.standins.kube.patch import PatchError, json_patch, merge_patch
from policyflow.standins.kube.resources import Resource, resources_from_crd
from policyflow.standins.kube.selectors import (
    Requirement,
    SelectorError,
    match_labels,
    parse_field_selector,
    parse_label_selector,
)
from policyflow.standins.kube.standin import KubeStandin

__all__ = [
    "DEFAULT_USER",
    "KubeApiError",
    "KubeStandin",
    "PatchError",
    "RecordedRequest",
    "Requirement",
    "Resource",
    "SelectorError",
    "decode_continue",
    "encode_continue",
    "json_patch",
    "match_labels",
    "merge_patch",
    "parse_field_selector",
    "parse_label_selector",
    "resources_from_crd",
    "status_body",
    "strip_server_metadata",
]
