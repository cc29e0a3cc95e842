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
* ``GET /test-workflow-executions/{id}/logs`` and ``GET /test-workflows/{name}/executions/{id}/logs``
  exist on the agent (``internal/app/api/v1/server.go``, handler ``GetTestWorkflowExecutionLogsHandler``
  in ``testworkflowexecutions.go``) but **not in its OpenAPI spec**, so requests to them are never
  validated against it. They answer ``text/plain``: the stored log, each line after its timestamp,
  each step's lines after a start hint (:mod:`.scripts` has the format and its sources). A log that was
  not saved yet (the run has not finished) is a 500 ``can't get log``, and so is a log asked for by
  execution *name*: the handler finds the execution by id or name, then reads the log by the path's value.

Executions carry a ``signature`` tree and ``result.steps`` from their workflow's :class:`Script`
(:meth:`TestkubeStandin.set_script`; default :func:`smoke_script`, whose failing step is a ``curl``
exiting 7). On ``failed`` the script's failing step fails and the later ones are skipped; on
``aborted``/``canceled`` that step is the one interrupted.

Executions advance ``queued -> running -> <outcome>`` on each GET of that execution (:mod:`.executions`),
so tests are deterministic and never sleep. Requests may be validated against the spec (:mod:`.openapi`).
Faults (HTTP errors, dropped connections, delays, "the answer was lost after the execution started")
are injected with :meth:`TestkubeStandin.inject`; the plumbing is :mod:`policyflow.standins.http`'s.
"""

from policyflow.standins.http import RecordedRequest
from policyflow.standins.testkube.executions import OUTCOMES, TERMINAL_STATUSES, status_after_polls
from policyflow.standins.testkube.gotypes import ZERO_TIME, go_duration, go_time, problem
from policyflow.standins.testkube.scripts import FAKE_CREDENTIAL_LINE, Script, smoke_script, start_hint
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
    "FAKE_CREDENTIAL_LINE",
    "OUTCOMES",
    "TERMINAL_STATUSES",
    "ZERO_TIME",
    "RecordedRequest",
    "Script",
    "TestkubeStandin",
    "go_duration",
    "go_time",
    "matches_label_selector",
    "matches_tag_selector",
    "parse_status_filter",
    "parse_tag_selector",
    "problem",
    "smoke_script",
    "start_hint",
    "status_after_polls",
]
