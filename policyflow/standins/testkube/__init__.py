"""A loopback stand-in for the Testkube agent API (TestWorkflow executions only).

It speaks the API the way the real agent does, not the way ``api/v1/testkube.yaml`` says it does.
``shared/specs/SOURCES.md`` section 3 lists the differences; the ones emulated here:

* ``POST /test-workflows/{name}/executions`` answers with ONE execution object (the spec says an
  array); ``POST /test-workflow-executions?selector=`` answers with an array.
* The run body is only read when ``Content-Type`` is JSON (fiber's ``BodyParser``); otherwise it is
  ignored and the run behaves as if ``{}`` had been sent (:mod:`.body`). ``name`` in the body is
  ignored: the execution is always called ``<workflow>-<number>``.
* An unknown workflow on run is a **500**, not a 404.
* List endpoints answer with one object ``{totals, filtered, results}`` (the spec says an array), read
  ``page``/``pageSize``/``status``/``selector``/``textSearch`` although the spec does not declare them,
  drop the whole ``status`` filter when any value is unknown, and fall back to 100 for ``pageSize=0``
  (:mod:`.selectors`). ``totals`` is counted with a default filter and so never exceeds 100.
* Unset times are ``"0001-01-01T00:00:00Z"`` (Go's zero ``time.Time``), durations are Go strings
  (:mod:`.gotypes`).
* Errors are RFC 7807 bodies served as ``application/json`` (fiber's ``c.JSON`` drops problem+json).
* An execution can be addressed by its id or its name.

Executions advance ``queued -> running -> <outcome>`` on each GET of that execution (:mod:`.executions`),
so tests are deterministic and never sleep. Requests may be validated against the spec (:mod:`.openapi`).
Faults (HTTP errors, dropped connections, delays, "the answer was lost after the execution started")
are injected with :meth:`TestkubeStandin.inject`; the plumbing is :mod:`policyflow.standins.http`'s.
"""

from policyflow.standins.http import RecordedRequest
from policyflow.standins.testkube.executions import OUTCOMES, TERMINAL_STATUSES, status_after_polls
from policyflow.standins.testkube.gotypes import ZERO_TIME, go_duration, go_time, problem
from policyflow.standins.testkube.selectors import (
    ALL_STATUSES,
    matches_label_selector,
    matches_tag_selector,
    parse_status_filter,
    parse_tag_selector,
)
from policyflow.standins.testkube.standin import TestkubeStandin

__all__ = [
    "ALL_STATUSES",
    "OUTCOMES",
    "TERMINAL_STATUSES",
    "ZERO_TIME",
    "RecordedRequest",
    "TestkubeStandin",
    "go_duration",
    "go_time",
    "matches_label_selector",
    "matches_tag_selector",
    "parse_status_filter",
    "parse_tag_selector",
    "problem",
    "status_after_polls",
]
