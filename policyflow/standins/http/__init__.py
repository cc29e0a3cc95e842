"""HTTP plumbing both stand-ins share: request log, fault injection, dropped connections, route tables.

Each stand-in answers in its own server's dialect (Status objects for Kubernetes, RFC 7807 for
Testkube); what is the same for both lives here once, in :class:`HttpStandin`.
"""

from policyflow.standins.http.drop import DropConnection, remember_connection
from policyflow.standins.http.faults import Fault, FaultPlan
from policyflow.standins.http.log import RecordedRequest, RequestLog
from policyflow.standins.http.routes import Match, RouteTable
from policyflow.standins.http.standin import HttpStandin

__all__ = [
    "DropConnection",
    "Fault",
    "FaultPlan",
    "HttpStandin",
    "Match",
    "RecordedRequest",
    "RequestLog",
    "RouteTable",
    "remember_connection",
]
