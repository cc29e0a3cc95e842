"""Malformed and hostile inputs: each one gets a clear one-line answer, and nothing is touched.

The corpus beside this file:

- ``config/*.yaml``: config files that must be refused. Their leading comments say what is wrong and
  what the error must say, one ``# expect:`` per problem (one line each; every line also names the
  file); ``# bug:`` marks a case the product does not handle yet (a strict xfail). Each file goes
  through ``settings.load`` and through the real CLI (``policyflow scan --config FILE``: exit 2, one
  stderr line per problem, and not one request to the cluster).
- ``reports/*.yaml``: reports a CRD without strict validation lets through. ``# violations:`` how many
  are still read, one ``# problem:`` per expected problem line (each names the report and the field),
  ``# resource:`` the resource every violation is about, ``# check: field: value`` on every violation.
- ``testkube/answers.yaml``: answers a Testkube API might send with 200 that are not executions, for
  ``parse_execution`` and for the client's calls against the Testkube stand-in (its header explains).

Inputs too big or too binary for a data file (5 MB configs, bytes that are not UTF-8, 1 MB messages,
10,000 results, JSON nested 100,000 deep) are made here.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from policyflow import settings
from policyflow.cli import main
from policyflow.clients.testkube import TestkubeClient, TestkubeProtocolError, parse_execution
from policyflow.domain.errors import ConfigError
from policyflow.domain.model import POLICY_REPORT, report_kind_named
from policyflow.domain.reports import parse_report
from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.specs import REPORT_CRDS, example

CORPUS = Path(__file__).resolve().parent
CONFIGS = sorted((CORPUS / "config").glob("*.yaml"))
REPORTS = sorted((CORPUS / "reports").glob("*.yaml"))
ANSWERS: list[dict[str, Any]] = yaml.safe_load((CORPUS / "testkube" / "answers.yaml").read_text(encoding="utf-8"))
MB = 1024 * 1024


def header(path: Path) -> dict[str, list[str]]:
    """The ``# key: value`` lines at the top of a corpus file, by key."""
    found: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(": ")
        if sep and key.isidentifier():
            found.setdefault(key, []).append(value)
    return found


def bug_marks(reasons: list[str] | None) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=f"BUG: {reasons[0]}")] if reasons else []


def match_lines(lines: list[str], expected: list[str]) -> None:
    """Each expected substring in its own line, and no line left over."""
    assert len(lines) == len(expected), f"{len(lines)} lines for {len(expected)} problems: {lines}"
    left = list(lines)
    for want in expected:
        hit = next((line for line in left if want in line), None)
        assert hit is not None, f"no line says {want!r}: {left}"
        left.remove(hit)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("POLICYFLOW_"):
            monkeypatch.delenv(name)


# ---- config files ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeStandin, Path]]:
    """A cluster the CLI would reach if it got that far: its requests must stay empty."""
    with KubeStandin(REPORT_CRDS) as server:
        yield server, server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@pytest.fixture
def cli(kube: tuple[KubeStandin, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``policyflow`` in-process with the stand-in cluster configured; (status, stdout, stderr)."""
    server, kubeconfig = kube
    monkeypatch.setenv("POLICYFLOW_KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        before = len(server.requests)
        code = main(list(args))
        out, err = capsys.readouterr()
        assert server.requests[before:] == [], "a bad config must stop before any cluster access"
        return code, out, err

    return run


def assert_config_error(path: Path, expected: list[str], *, max_line: int | None = None) -> None:
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        settings.load({"config": str(path)})
    message = str(info.value)
    lines = message.split("\n")
    assert "Traceback" not in message
    for line in lines:
        assert str(path) in line, f"the line does not name the file: {line!r}"
        if max_line is not None:
            assert len(line) <= max_line, f"a {len(line)}-character error line"
    match_lines(lines, expected)
    assert path.read_bytes() == before


def assert_cli_refuses(run: Callable[..., tuple[int, str, str]], path: Path, expected: list[str],
                       command: str = "scan") -> None:
    code, out, err = run(command, "--config", str(path))
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    assert lines[0].startswith("policyflow: error: ")
    match_lines(lines, expected)


CONFIG_CASES = [pytest.param(p, id=p.stem, marks=bug_marks(header(p).get("bug"))) for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIG_CASES)
def test_config_file_is_refused_with_one_line_per_problem(path: Path) -> None:
    expected = header(path)["expect"]
    assert_config_error(path, expected)


@pytest.mark.parametrize("path", CONFIG_CASES)
def test_config_file_is_refused_by_the_cli_before_any_cluster_access(
    path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    assert_cli_refuses(cli, path, header(path)["expect"])


def test_the_cli_check_would_see_cluster_access(cli: Callable[..., tuple[int, str, str]],
                                                kube: tuple[KubeStandin, Path], tmp_path: Path) -> None:
    """Control: with a good config the same CLI does reach the stand-in (so "no request" means something)."""
    good = tmp_path / "good.yaml"
    good.write_text("routes:\n- workflow: smoke-nova\n")
    server, _ = kube
    before = len(server.requests)
    assert main(["scan", "--config", str(good)]) == 0
    assert len(server.requests) > before


# Made here: not UTF-8, or too big for the repository.

def _bytes(data: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(data)

    return write


GARBAGE = b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(4096)
GENERATED_CONFIGS = [
    pytest.param(_bytes(GARBAGE), ["not UTF-8"], None, id="binary-garbage"),
    pytest.param(_bytes("namespaces: [café]\n".encode("latin-1")), ["not UTF-8"], None, id="latin-1"),
    pytest.param(_bytes("page_size: 3\n".encode("utf-16")), ["not UTF-8"], None, id="utf-16"),
    pytest.param(_bytes(b"routes: []\x00\n"), ["invalid YAML"], None, id="nul-byte"),
    pytest.param(_bytes(b"\x1b[31mred\x1b[0m: 1\n"), ["invalid YAML"], None, id="escape-sequences"),
    pytest.param(_bytes(("# " + "x" * 98 + "\n").encode() * (5 * MB // 101) + b"retrys: 3\n"),
                 ["retrys: unknown setting"], 1000, id="5MB-of-comments-then-a-typo"),
    pytest.param(_bytes(b"junk: '" + b"x" * (5 * MB) + b"'\n"), ["junk: unknown setting"], 1000,
                 id="5MB-value-of-an-unknown-setting"),
    pytest.param(_bytes(b"a" * (5 * MB)), ["the top level must be a mapping"], 1000, id="5MB-single-word"),
    pytest.param(_bytes(b"routes:\n- workflow: '{" + b"x" * (5 * MB) + b"}'\n"),
                 ["routes[0]: workflow: unknown placeholder"], 1000, id="5MB-template"),
]


@pytest.mark.parametrize(("write", "expected", "max_line"), GENERATED_CONFIGS)
def test_generated_config_file_is_refused_with_one_line(
    write: Callable[[Path], None], expected: list[str], max_line: int | None, tmp_path: Path,
    cli: Callable[..., tuple[int, str, str]],
) -> None:
    path = tmp_path / "policyflow.yaml"
    write(path)
    assert_config_error(path, expected, max_line=max_line)
    assert_cli_refuses(cli, path, expected)


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# only a comment\n", "routes:\n", "routes: []\n"])
def test_a_config_file_with_no_routes_loads_and_run_once_says_there_is_no_route(
    text: str, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = tmp_path / "policyflow.yaml"
    path.write_text(text)
    _, routing = settings.load({"config": str(path)})
    assert routing.is_empty
    assert_cli_refuses(cli, path, ["no route: set POLICYFLOW_DEFAULT_WORKFLOW or give routes in --config"],
                       command="run-once")


# ---- reports --------------------------------------------------------------------------------------

def report_cases() -> list[Any]:
    return [pytest.param(p, id=p.stem, marks=bug_marks(header(p).get("bug"))) for p in REPORTS]


@pytest.mark.parametrize("path", report_cases())
def test_report_is_read_around_what_is_wrong(path: Path) -> None:
    expect = header(path)
    report = yaml.safe_load(path.read_text(encoding="utf-8"))
    untouched = copy.deepcopy(report)
    try:
        kind = report_kind_named(str(report.get("kind")))
    except ValueError:
        kind = POLICY_REPORT
    parsed = parse_report(kind, report)
    assert report == untouched, "parsing must not change the report"
    assert len(parsed.violations) == int(expect["violations"][0]), parsed.problems
    for line in parsed.problems:
        assert "\n" not in line
        assert line.startswith(f"{parsed.ref}: results"), line
    match_lines(parsed.problems, expect.get("problem", []))
    for violation in parsed.violations:
        if "resource" in expect:
            assert str(violation.resource) == expect["resource"][0]
        for check in expect.get("check", []):
            field, _, value = check.partition(": ")
            assert getattr(violation, field) == value
        assert violation.severity is None or violation.severity == violation.severity.lower()
        assert violation.timestamp is None or isinstance(violation.timestamp, int)
        assert isinstance(violation.message, str)


def test_huge_messages_are_kept_whole_and_the_report_still_read() -> None:
    report = example("policyreport-fail.yaml")
    result = report["results"][0]
    big = "é" * (MB // 2) + "x" * (MB // 2)
    report["results"] = [
        {**result, "message": big},
        {**result, "rule": "described", "message": None, "description": big},
        {**result, "rule": "nameless-policy", "policy": "p" * MB},
        {**result, "rule": "bogus", "result": "f" * MB},
    ]
    started = time.perf_counter()
    parsed = parse_report(POLICY_REPORT, report)
    elapsed = time.perf_counter() - started
    print(f"\n4 results with 1 MB fields parsed in {elapsed * 1000:.1f} ms")
    assert [len(v.message) for v in parsed.violations] == [MB, MB, len(result["message"])]
    assert parsed.violations[2].policy == "p" * MB
    (problem,) = parsed.problems
    assert "\n" not in problem and "results[3].result is" in problem
    print(f"the problem line for a 1 MB result value is {len(problem)} characters long")


def test_ten_thousand_results_in_one_report() -> None:
    report = example("policyreport-fail.yaml")
    result = report["results"][0]
    report["results"] = [{**result, "rule": f"rule-{i}", "message": f"message {i}"} for i in range(10_000)]
    started = time.perf_counter()
    parsed = parse_report(POLICY_REPORT, report)
    elapsed = time.perf_counter() - started
    print(f"\n10,000 results parsed in {elapsed * 1000:.1f} ms")
    assert len(parsed.violations) == 10_000
    assert len({v.key for v in parsed.violations}) == 10_000
    assert parsed.problems == []


# ---- Testkube answers -----------------------------------------------------------------------------

CALLS: dict[str, tuple[str, str]] = {
    # call: (method, regex of the request path the injected answer replies to)
    "run_workflow": ("POST", r"/v1/test-workflows/smoke-nova/executions$"),
    "get_execution": ("GET", r"/v1/test-workflow-executions/x1$"),
    "find_executions": ("GET", r"/v1/test-workflow-executions$"),
}


def answer_cases(what: str) -> list[Any]:
    cases = []
    for case in ANSWERS:
        if what in case:
            bug = (case.get("bugs") or {}).get(what)
            cases.append(pytest.param(case, id=case["name"], marks=bug_marks([bug] if bug else None)))
    return cases


def assert_protocol_error(call: Callable[[], Any], expected: str) -> None:
    if expected == "ok":
        call()
        return
    with pytest.raises(TestkubeProtocolError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, f"a multi-line error: {message!r}"
    assert expected in message
    assert message.startswith("Testkube")


@pytest.mark.parametrize("case", [c for c in answer_cases("parse") if "json" in c.values[0]])
def test_parse_execution_names_what_is_wrong_in_one_line(case: dict[str, Any]) -> None:
    assert_protocol_error(lambda: parse_execution(case["json"]), case["parse"])


@pytest.fixture(scope="module")
def testkube() -> Iterator[TestkubeStandin]:
    with TestkubeStandin(workflows=["smoke-nova"]) as server:
        yield server


def call_client(testkube: TestkubeStandin, what: str, *, text: str | None = None, body: Any = None) -> Any:
    """Inject one 200 answer for ``what``, make the call, and check it was the only request and created nothing."""
    method, path = CALLS[what]
    if text is not None:
        testkube.inject(method=method, path=path, status=200, body=text)
    else:
        testkube.inject(method=method, path=path, status=200, body=json.dumps(body),
                        headers={"content-type": "application/json"})
    before = len(testkube.requests)

    async def go() -> Any:
        async with TestkubeClient(url=testkube.url, timeout=5) as client:
            if what == "run_workflow":
                return await client.run_workflow(workflow="smoke-nova", request={"tags": {"a": "b"}})
            if what == "get_execution":
                return await client.get_execution(execution_id="x1")
            return await client.find_executions(tags={"policyflow-key": "k"})

    try:
        return asyncio.run(go())
    finally:
        assert len(testkube.requests) == before + 1, "exactly one request, no retry inside the client"
        assert testkube.executions == [], "no execution may be created"


CLIENT_CASES = [
    pytest.param(case, what, id=f"{case['name']}-{what}",
                 marks=bug_marks([case["bugs"][what]] if what in (case.get("bugs") or {}) else None))
    for case in ANSWERS for what in CALLS if what in case
]


@pytest.mark.parametrize(("case", "what"), CLIENT_CASES)
def test_client_raises_a_typed_one_line_error_for_answers_that_are_not_executions(
    case: dict[str, Any], what: str, testkube: TestkubeStandin
) -> None:
    if "text" in case:
        kwargs: dict[str, Any] = {"text": case["text"]}
    else:
        kwargs = {"body": case["list_json"] if what == "find_executions" and "list_json" in case else case["json"]}
    assert_protocol_error(lambda: call_client(testkube, what, **kwargs), case[what])


@pytest.mark.parametrize("what", list(CALLS))
def test_deeply_nested_json_answer(what: str, testkube: TestkubeStandin) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert_protocol_error(lambda: call_client(testkube, what, text=deep), "not JSON")
