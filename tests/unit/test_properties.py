"""Properties of the pure core, checked on generated inputs (hypothesis).

Each property names what it promises; the deterministic examples below pin inputs that once broke it.
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyflow.domain.ledger import ANNOTATION_PREFIX, Record, Status, annotation_name, read_records
from policyflow.domain.markdown import escape, execution_markdown
from policyflow.domain.model import (
    KEY_LENGTH,
    POLICY_REPORT,
    REPORT_KINDS,
    ReportRef,
    ResourceRef,
    ResultKind,
    Violation,
    violation_key,
)
from policyflow.domain.reports import ParsedReport, parse_report
from policyflow.domain.routing import check_template, render
from policyflow.domain.testrun import MAX_TAG_VALUE, tag_value
from tests.specs import example

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXAMPLE = example("policyreport-fail.yaml")

# ---- strategies ------------------------------------------------------------------------------------

#: Finite floats only: json.dumps writes inf/nan as Infinity/NaN, which the ledger cannot take (see
#: test_a_record_with_an_infinite_episode_is_unreadable_not_a_crash).
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
REPORT_KEYS = ["apiVersion", "kind", "metadata", "scope", "results", "summary"]
RESULT_KEYS = ["policy", "rule", "result", "resources", "subjects", "message", "description", "severity",
               "category", "source", "timestamp", "scored", "properties"]
RESOURCE_KEYS = ["apiVersion", "kind", "name", "namespace", "uid"]


def mapping_of(keys: list[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts whose keys are mostly the ones that mean something, sometimes any text."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), values, max_size=len(keys) + 1)


resource_like = mapping_of(RESOURCE_KEYS, scalars | json_like)
result_like = mapping_of(
    RESULT_KEYS,
    st.sampled_from(["fail", "pass", "warn", "error", "skip", "FAIL"]) | scalars
    | st.lists(resource_like | json_like, max_size=3) | json_like,
)
metadata_like = mapping_of(["name", "namespace", "uid", "resourceVersion", "annotations", "ownerReferences"],
                           scalars | st.lists(resource_like | json_like, max_size=2)
                           | st.dictionaries(st.text(max_size=8), scalars, max_size=3) | json_like)


report_like = st.one_of(
    st.dictionaries(st.text(max_size=8), json_like, max_size=5),
    mapping_of(REPORT_KEYS, json_like),
    st.fixed_dictionaries({}, optional={
        "metadata": metadata_like | json_like,
        "scope": resource_like | json_like,
        "results": st.lists(result_like | json_like, max_size=6) | json_like,
    }),
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node below ``node`` (dict keys and list indexes)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


EXAMPLE_PATHS = paths(EXAMPLE)


@st.composite
def perturbed_example(draw: st.DrawFn) -> dict[str, Any]:
    """The real example report with a few fields removed or replaced by random values."""
    report = copy.deepcopy(EXAMPLE)
    for path in draw(st.lists(st.sampled_from(EXAMPLE_PATHS), min_size=1, max_size=6)):
        parent: Any = report
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()):
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(json_like)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or replaced the way there
    return report


# ---- parsing never crashes -------------------------------------------------------------------------

def check_parsed(parsed: ParsedReport) -> None:
    assert isinstance(parsed, ParsedReport)
    ref = str(parsed.ref)
    for problem in parsed.problems:
        assert isinstance(problem, str)
        assert problem.startswith(f"{ref}: results")
        if "\n" not in ref:
            assert "\n" not in problem
    for violation in parsed.violations:
        assert isinstance(violation, Violation)
        assert violation.policy and isinstance(violation.policy, str)
        assert isinstance(violation.rule, str)
        assert violation.resource.name and violation.resource.kind
        assert isinstance(violation.result, ResultKind)
        assert re.fullmatch(r"[0-9a-f]{16}", violation.key)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.annotations.items())


@FAST
@given(st.sampled_from(REPORT_KINDS), report_like)
def test_parsing_arbitrary_report_objects_never_crashes(kind: Any, report: dict[str, Any]) -> None:
    untouched = copy.deepcopy(report)
    check_parsed(parse_report(kind, report))
    assert report == untouched


@FAST
@given(st.sampled_from(REPORT_KINDS), perturbed_example())
def test_parsing_a_perturbed_real_report_never_crashes(kind: Any, report: dict[str, Any]) -> None:
    check_parsed(parse_report(kind, report))


@pytest.mark.parametrize("metadata", [["x"], "default/report", 7, True])
def test_metadata_that_is_not_a_mapping_is_a_problem_not_a_crash(metadata: Any) -> None:
    report = copy.deepcopy(EXAMPLE)
    report["metadata"] = metadata
    del report["scope"]
    parsed = parse_report(POLICY_REPORT, report)
    assert parsed.violations == []
    assert len(parsed.problems) == 1


# ---- keys --------------------------------------------------------------------------------------------

dns_name = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
uids = st.uuids().map(str)
rules = st.text(min_size=1, max_size=30)


@st.composite
def failing_results(draw: st.DrawFn) -> list[dict[str, Any]]:
    identities = draw(st.lists(st.tuples(dns_name, rules, dns_name, uids), min_size=1, max_size=8,
                               unique=True))
    template = EXAMPLE["results"][0]
    return [{**copy.deepcopy(template), "policy": policy, "rule": rule,
             "resources": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "namespace": "default",
                            "uid": uid}]}
            for policy, rule, name, uid in identities]


@FAST
@given(failing_results(), st.randoms(use_true_random=False), st.data())
def test_keys_do_not_change_with_result_order_timestamps_messages_or_categories(
    results: list[dict[str, Any]], rnd: Any, data: st.DataObject
) -> None:
    report = copy.deepcopy(EXAMPLE)
    report["results"] = results
    before = sorted(v.key for v in parse_report(POLICY_REPORT, report).violations)
    rescanned = copy.deepcopy(report)
    rnd.shuffle(rescanned["results"])
    for result in rescanned["results"]:
        result["timestamp"] = {"seconds": data.draw(st.integers(0, 2**40)), "nanos": data.draw(st.integers(0, 10**9))}
        result["message"] = data.draw(st.text())
        result["category"] = data.draw(st.text() | st.none())
        result["severity"] = data.draw(st.sampled_from(["low", "medium", "high", "critical"]))
    after = sorted(v.key for v in parse_report(POLICY_REPORT, rescanned).violations)
    assert before == after
    assert len(set(before)) == len(results)


@FAST
@given(st.sets(st.tuples(uids | dns_name, dns_name, rules), min_size=2, max_size=60))
def test_distinct_uid_policy_rule_give_distinct_keys(identities: set[tuple[str, str, str]]) -> None:
    keys = {violation_key(ResourceRef("apps/v1", "Deployment", "web", "default", uid), policy, rule)
            for uid, policy, rule in identities}
    assert len(keys) == len(identities)


@FAST
@given(st.sets(st.tuples(st.sampled_from(["", "apps", "batch", "example.com"]), st.sampled_from(["Pod", "Deployment"]),
                         st.none() | dns_name, dns_name, st.none() | uids, dns_name, rules), min_size=2, max_size=40))
def test_distinct_resources_give_distinct_keys(identities: set[tuple[Any, ...]]) -> None:
    keys = set()
    for group, kind, namespace, name, uid, policy, rule in identities:
        api_version = f"{group}/v1" if group else "v1"
        keys.add(violation_key(ResourceRef(api_version, kind, name, namespace, uid), policy, rule))
    assert len(keys) == len(identities)


# ---- records ------------------------------------------------------------------------------------------

optional_text = st.none() | st.text()


def records(key: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Record]:
    return st.builds(
        Record,
        key=st.text() if key is None else key,
        policy=st.text(), rule=st.text(), resource=st.text(), status=st.sampled_from(list(Status)),
        episode=st.integers(), report_uid=st.text(), updated=st.text(), workflow=optional_text,
        execution=optional_text, execution_name=optional_text, generation=st.none() | st.integers(),
        detected=optional_text, finished=optional_text, error=optional_text, owner=optional_text,
    )


@FAST
@given(records())
def test_a_record_round_trips_through_json(record: Record) -> None:
    text = record.to_json()
    assert Record.from_json(text) == record
    assert "\n" not in text


@FAST
@given(records(st.text(min_size=KEY_LENGTH)))
def test_a_record_round_trips_through_its_annotation(record: Record) -> None:
    records, problems = read_records({annotation_name(record.key): record.to_json(), "other.io/x": "{}"})
    assert records == {record.key[:KEY_LENGTH]: record}
    assert problems == []


record_like_values = st.fixed_dictionaries(
    {"key": scalars | st.text(), "status": st.sampled_from([s.value for s in Status]) | scalars},
    optional=dict.fromkeys(["policy", "rule", "episode", "generation", "updated", "workflow", "execution", "owner",
                            "error"], scalars | json_like),
).map(json.dumps)
annotation_names = st.text(max_size=20) | st.text(max_size=20).map(lambda s: ANNOTATION_PREFIX + s)
annotation_values = st.text() | json_like.map(json.dumps) | record_like_values


@FAST
@given(st.dictionaries(annotation_names, annotation_values, max_size=8))
def test_read_records_never_raises_on_arbitrary_annotations(annotations: dict[str, str]) -> None:
    records, problems = read_records(annotations)
    ours = [name for name in annotations if name.startswith(ANNOTATION_PREFIX)]
    assert len(records) + len(problems) <= len(ours)
    assert all(isinstance(r, Record) for r in records.values())
    for problem in problems:
        assert problem.startswith(f"annotation {ANNOTATION_PREFIX}")
        assert problem.endswith("; treated as absent")


@pytest.mark.parametrize("value", ['{"key": "k", "status": "passed", "episode": Infinity}',
                                   '{"key": "k", "status": "passed", "generation": 1e999}'])
def test_a_record_with_an_infinite_episode_is_unreadable_not_a_crash(value: str) -> None:
    records, problems = read_records({"policyflow.io/0123456789abcdef": value})
    assert records == {}
    assert len(problems) == 1


def test_a_deeply_nested_annotation_is_unreadable_not_a_crash() -> None:
    records, problems = read_records({"policyflow.io/0123456789abcdef": "[" * 100_000 + "]" * 100_000})
    assert records == {}
    assert len(problems) == 1


# ---- routing templates ----------------------------------------------------------------------------------

template_parts = st.sampled_from(["{", "}", "{{", "}}", "{policy}", "{rule}", "{resource.name}", "{resource.uid}",
                                  "{report.name}", "{message}", "{key}", "{resource.__class__}", "{0}", "{}",
                                  "{policy!r}", "{resource.name", "policy}", "{ policy }"]) | st.text(max_size=6)
templates = st.lists(template_parts, max_size=8).map("".join) | st.text()


@st.composite
def violations(draw: st.DrawFn) -> Violation:
    text = st.text(max_size=30)
    return Violation(
        report=ReportRef(draw(st.sampled_from(REPORT_KINDS)), draw(text), draw(st.none() | text)),
        report_uid=draw(text),
        resource=ResourceRef(draw(text), draw(text), draw(text), draw(st.none() | text), draw(st.none() | text)),
        policy=draw(text), rule=draw(text), result=draw(st.sampled_from(list(ResultKind))), message=draw(st.text()),
        severity=draw(st.none() | text), category=draw(st.none() | text),
    )


@FAST
@given(templates, violations())
def test_check_template_accepts_or_raises_value_error_and_accepted_ones_render(
    template: str, violation: Violation
) -> None:
    try:
        checked: str | None = check_template(template)
    except ValueError as exc:
        checked, message = None, str(exc)
    if checked is None:
        assert message  # (a newline inside a placeholder makes it two lines: see tests/corpus, hostile-newline-*)
        return
    assert checked == template
    assert isinstance(render(template, violation), str)


@FAST
@given(st.text(), violations())
def test_rendering_is_plain_replacement_never_a_second_expansion(message: str, violation: Violation) -> None:
    hostile = Violation(report=violation.report, report_uid=violation.report_uid, resource=violation.resource,
                        policy="{rule}", rule="{{", result=violation.result, message=message + "{policy}")
    assert render("{message}|{policy}|{rule}", hostile) == f"{message}{{policy}}|{{rule}}|{{{{"


# ---- tags ------------------------------------------------------------------------------------------------

C1 = [chr(c) for c in range(0x80, 0xA0)]


@FAST
@given(st.text(alphabet=st.characters(exclude_characters=C1)))
def test_tag_value_is_one_bounded_line_without_control_characters(value: str) -> None:
    tagged = tag_value(value)
    assert len(tagged) <= MAX_TAG_VALUE
    assert not any(unicodedata.category(c) == "Cc" for c in tagged), repr(tagged)


@FAST
@given(st.text(min_size=MAX_TAG_VALUE + 1))
def test_tag_value_is_bounded_for_any_text(value: str) -> None:
    assert len(tag_value(value)) <= MAX_TAG_VALUE


@pytest.mark.parametrize("value", ["a\x85b", "\x9b31mred"])
def test_tag_value_strips_c1_control_characters(value: str) -> None:
    assert not any(unicodedata.category(c) == "Cc" for c in tag_value(value))


# ---- markdown --------------------------------------------------------------------------------------------

#: What changes markdown anywhere inside a line (inline syntax, HTML, table cells); markdown.py says
#: that `#`, `+`, `-` and `.` matter only at the start of a line.
INLINE_SPECIAL = "\\`*_{}[]()!|<>~"
_SPECIAL_CLASS = re.escape(INLINE_SPECIAL)
#: Punctuation that opens a block at the start of a line (heading, quote, list, rule): escaped there.
_BLOCK_CLASS = re.escape("#>+=-.)")
_ESCAPED_LINE = re.compile(rf"(?:\\[{_SPECIAL_CLASS}{_BLOCK_CLASS}]|[^{_SPECIAL_CLASS}\r\n])*")


@FAST
@given(st.text())
def test_escape_gives_one_line_with_every_special_character_escaped(text: str) -> None:
    escaped = escape(text)
    assert "\n" not in escaped and "\r" not in escaped
    assert _ESCAPED_LINE.fullmatch(escaped), repr(escaped)
    # Nothing lost: unescaping gives the text back, line breaks folded into spaces.
    assert re.sub(r"\\(.)", r"\1", escaped) == re.sub(r"[\r\n]+", " ", text)


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line))


@FAST
@given(violations(), st.text(), st.none() | st.text(), st.none() | st.text())
def test_the_artifact_keeps_its_shape_whatever_the_report_says(
    violation: Violation, workflow: str, execution: str | None, url: str | None
) -> None:
    record = Record(key=violation.key, policy=violation.policy, rule=violation.rule, resource=str(violation.resource),
                    status=Status.FAILED, episode=1, report_uid="uid", updated="now", workflow=workflow,
                    execution=execution, execution_name=execution)
    page = execution_markdown(violation, record, url=url)
    lines = page.split("\n")  # markdown's line endings; str.splitlines() also splits at \x1c-\x1e, \x85...
    rows = [line for line in lines if line.startswith("| ")]
    assert len(rows) == 10  # the header row and 9 field rows (the delimiter row starts with "|---")
    assert all(_unescaped_pipes(row) == 3 for row in rows if "](<" not in row), rows


@pytest.mark.parametrize("message", ["# looks like a heading", "- looks like a list item", "+ also a list item",
                                     "1. looks like a numbered list", "---"])
def test_the_message_quote_cannot_start_a_block(message: str) -> None:
    (violation,) = parse_report(POLICY_REPORT, EXAMPLE).violations
    violation = Violation(report=violation.report, report_uid=violation.report_uid, resource=violation.resource,
                          policy=violation.policy, rule=violation.rule, result=violation.result, message=message)
    record = Record(key=violation.key, policy="p", rule="r", resource="x", status=Status.PASSED, episode=1,
                    report_uid="u", updated="now")
    quote = next(line for line in execution_markdown(violation, record, url=None).split("\n")
                 if line.startswith(">"))
    assert not re.match(r">\s*(#{1,6}(\s|$)|[-+*]\s|\d{1,9}[.)](\s|$)|(-\s*){3,}$)", quote), quote

