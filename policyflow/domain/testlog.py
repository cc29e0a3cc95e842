"""Reading a TestWorkflow execution's stored log (``GET /test-workflow-executions/{id}/logs``), pure.

The format, as read in kubeshop/testkube @ 2b73b131 (SOURCES.md section 3):

* Every output line starts with the time it was written, ``2006-01-02T15:04:05.000000000Z`` (30
  characters, ``constants.PreciseTimeFormat`` in ``cmd/testworkflow-init/constants/formats.go``) or the
  same with a ``+07:00`` offset (``KubernetesTimezoneLogTimeFormat`` in
  ``pkg/testworkflows/executionworker/controller/utils.go``), then one space, then the text
  (``notifier.Log`` in ``pkg/testworkflows/executionworker/controller/notifier.go``; the container's own
  lines keep the kubelet's timestamp prefix, ``controller/logs.go``).
* Where a step starts, the runner writes a *hint* on a line of its own, with no timestamp:
  ``"\\n" + "\\x01\\x05" + "\\x06" + ref + "\\x03" + "start" + "\\x03" + "\\n"`` (``SprintHint`` in
  ``cmd/testworkflow-init/instructions/emit.go``, called by ``executionLogsWriter.WriteStart`` in
  ``pkg/runner/executionlogswriter.go`` whenever the ref of the log changes, ``pkg/runner/runner.go``).
  Output instructions (``\\x01\\x05`` without ``\\x06``, ``SprintOutput``) are taken out of the stream by
  the controller, but a line shaped like one is not shown either.
* Lines before the first hint belong to the initialization (ref ``""``: the controller maps
  ``tktw-init`` to ``""``, ``notifier.Raw``).

The CLI reads the stored log the same way: it trims the timestamp and matches ``StartHintRe`` line by
line (``printRawLogLines`` in ``cmd/kubectl-testkube/commands/testworkflows/run.go``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: The ref lines before the first start hint belong to (the initialization).
INITIALIZATION_REF = ""

# instructionRe of cmd/testworkflow-init/instructions/emit.go, plus an optional timestamp prefix.
_INSTRUCTION = re.compile(
    "^\x01\x05(?P<hint>\x06)?(?P<ref>[^\x03]+)\x03(?P<name>[a-zA-Z0-9_.-]+)(?:\x04[^\n]+)?\x03$"
)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)(?: |$)")


def strip_timestamp(line: str) -> str:
    """``line`` without the timestamp Testkube put in front of it (unchanged when it has none)."""
    return _TIMESTAMP.sub("", line, count=1)


def split_log(text: str, *, first_ref: str = INITIALIZATION_REF) -> dict[str, list[str]]:
    """The log's lines per step ref, in the order the steps appear, timestamps and hints removed.

    Lines before the first start hint are filed under ``first_ref``: the initialization for a whole
    log, something else (the caller's marker for "unknown") when the log's beginning was cut off.
    A step that started twice (a retried step) gets its lines in one list.
    """
    steps: dict[str, list[str]] = {}
    current = first_ref
    for raw in text.split("\n"):
        raw = raw.removesuffix("\r")
        if raw == "":
            continue  # the newlines around a hint, and Go's trailing newline: not output lines
        line = strip_timestamp(raw)
        instruction = _INSTRUCTION.match(line)
        if instruction is not None:
            if instruction["hint"] and instruction["name"] == "start":
                current = instruction["ref"]
                steps.setdefault(current, [])
            continue
        steps.setdefault(current, []).append(line)
    return steps


def tail(lines: Sequence[str], count: int) -> list[str]:
    """The last ``count`` lines (none for ``count`` 0)."""
    return list(lines[-count:]) if count > 0 else []
