"""Markdown for artifacts, with every value from a report escaped where it lands (pure)."""

from __future__ import annotations

import re

from policyflow.domain.ledger import Record
from policyflow.domain.model import Violation

# What can start emphasis, code, links, HTML or end a table cell anywhere in a line. `-`, `.`, `#`
# and `+` matter only at the start of a line, and every value here lands after other text.
_SPECIAL = re.compile(r"([\\`*_{}\[\]()!|<>~])")
_NEWLINES = re.compile(r"[\r\n]+")


_BLOCK_START = re.compile(r"^(\s*)(?:([#>+=-])|(\d+)([.)]))")


def escape(text: str) -> str:
    """``text`` as literal markdown: special characters escaped, one line, and nothing at its start
    that could open a block (heading, quote, list, rule) wherever it lands."""
    line = _SPECIAL.sub(r"\\\1", _NEWLINES.sub(" ", text))
    def neutralise(m: re.Match[str]) -> str:
        if m.group(2):  # heading, quote, list or rule marker: escape it
            return f"{m.group(1)}\\{m.group(2)}"
        return f"{m.group(1)}{m.group(3)}\\{m.group(4)}"  # "1." -> "1\.": an escape must precede punctuation

    return _BLOCK_START.sub(neutralise, line)


def execution_markdown(violation: Violation, record: Record, *, url: str | None) -> str:
    """The violation, its Testkube execution and the result, as a short markdown page."""
    execution = escape(record.execution_name or record.execution or "-")
    link = f"[{execution}](<{url}>)" if url and record.execution else execution
    rows = [
        ("Policy", violation.policy),
        ("Rule", violation.rule),
        ("Resource", str(violation.resource)),
        ("Severity", violation.severity or "-"),
        ("Report", str(violation.report)),
        ("Workflow", record.workflow or "-"),
        ("Episode", str(record.episode)),
        ("Status", record.status.value),
    ]
    lines = [f"### {escape(violation.title)}", "", "| Field | Value |", "|---|---|"]
    lines += [f"| {name} | {escape(value)} |" for name, value in rows]
    lines.insert(lines.index("| Status | " + escape(record.status.value) + " |"), f"| Execution | {link} |")
    lines += ["", f"> {escape(violation.message[:2000])}" if violation.message else ""]
    return "\n".join(lines).rstrip() + "\n"
