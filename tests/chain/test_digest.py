"""collect-digest and the client calls it makes, over real HTTP to the Testkube stand-in: the failing
step, its log's tail, and a note instead of an error whenever Testkube cannot answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from policyflow.chain.digest import byte_size, collect_digest
from policyflow.clients.testkube import LogText, TestkubeClient, TestkubeUnavailable
from policyflow.domain.digest import FailureDigest
from policyflow.domain.errors import NotFoundError
from policyflow.retry import RetryPolicy
from policyflow.standins.testkube import FAKE_CREDENTIAL_LINE, Script, TestkubeStandin, smoke_script

FAST = RetryPolicy(retries=2, delay=0.0, jitter=0.0)


@pytest.fixture(scope="module")
def tk() -> Iterator[TestkubeStandin]:
    with TestkubeStandin(outcome="failed", queued_polls=0, running_polls=0, token="s3cret-token") as standin:
        yield standin


def finished(tk: TestkubeStandin, workflow: str, outcome: str, script: Script | None = None) -> str:
    """A finished execution of a fresh ``workflow`` that ended with ``outcome``; its id."""
    tk.add_workflow(workflow)
    tk.set_outcome(workflow, outcome)
    if script is not None:
        tk.set_script(workflow, script)

    async def go() -> str:
        async with client(tk) as testkube:
            execution = await testkube.run_workflow(workflow=workflow, request={})
            await testkube.get_execution(execution_id=execution.id)  # one poll finishes it
            return execution.id

    return asyncio.run(go())


def client(tk: TestkubeStandin) -> TestkubeClient:
    return TestkubeClient(url=tk.url, token="s3cret-token", timeout=2)


def digest(tk: TestkubeStandin, execution_id: str, **options: Any) -> FailureDigest:
    async def go() -> FailureDigest:
        async with client(tk) as testkube:
            return await collect_digest(testkube, execution_id, tail_lines=options.get("tail_lines", 20),
                                        max_log_bytes=options.get("max_log_bytes", 1 << 20),
                                        retry=options.get("retry", FAST))
    return asyncio.run(go())


def logs(tk: TestkubeStandin, execution_id: str, max_bytes: int) -> LogText:
    async def go() -> LogText:
        async with client(tk) as testkube:
            return await testkube.get_logs(execution_id=execution_id, max_bytes=max_bytes)
    return asyncio.run(go())


def test_a_failed_run_names_the_failing_step_its_exit_code_and_its_log_tail(tk: TestkubeStandin) -> None:
    execution_id = finished(tk, "dg-failed", "failed")
    result = digest(tk, execution_id, tail_lines=1)
    assert (result.step_name, result.step_status, result.exit_code, result.error_message) == (
        "Run smoke test", "failed", 7, "")
    assert result.log_tail == ("curl: (7) Failed to connect to nginx.default.svc port 80 after 3 ms: "
                               "Couldn't connect to server",)
    assert result.short().startswith('step "Run smoke test" failed (exit 7): curl: (7) Failed to connect')
    assert result.log_note is None


def test_a_credential_in_the_log_never_reaches_the_digest(tk: TestkubeStandin) -> None:
    execution_id = finished(tk, "dg-leak", "failed", smoke_script(leak_credential=True))
    result = digest(tk, execution_id)
    shown = "\n".join([*result.log_tail, result.markdown(None), str(result.payload())])
    assert "tkcapi_0123456789abcdef" not in shown
    assert "Authorization: [REDACTED]" in result.log_tail
    assert FAKE_CREDENTIAL_LINE not in shown


def test_a_passed_run_has_no_failing_step(tk: TestkubeStandin) -> None:
    result = digest(tk, finished(tk, "dg-passed", "passed"))
    assert result.step_name is None and result.execution_status == "passed"
    assert result.log_tail == ("report saved to /data/report.json",)  # the last step's lines


def test_an_aborted_run_names_the_interrupted_step_in_a_group(tk: TestkubeStandin) -> None:
    script = Script(steps=("Build", "Run e2e"), failing_step="Run e2e", group="Tests",
                    failing_lines=("e2e: 3 of 9 done",))
    result = digest(tk, finished(tk, "dg-aborted", "aborted", script))
    assert (result.step_name, result.step_status) == ("Run e2e", "aborted")
    assert result.error_message == "The execution has been aborted. (Job has been aborted)"
    assert result.log_tail == ("e2e: 3 of 9 done",)


@pytest.mark.parametrize(
    ("status", "times", "note"),
    [(404, 1, "log not found (404)"), (503, 3, "log unreadable: Testkube answered 503"),
     (0, 3, "log unreadable: Testkube did not answer")],
)
def test_an_unreadable_log_is_a_note_never_an_error(tk: TestkubeStandin, status: int, times: int, note: str) -> None:
    execution_id = finished(tk, f"dg-log-{status}", "failed")
    tk.inject(method="GET", path=f"/{execution_id}/logs$", status=status, times=times)
    result = digest(tk, execution_id)
    assert result.log_note == note
    assert (result.step_name, result.exit_code, result.log_tail) == ("Run smoke test", 7, ())


def test_a_transient_log_error_is_retried(tk: TestkubeStandin) -> None:
    execution_id = finished(tk, "dg-log-retry", "failed")
    tk.inject(method="GET", path=f"/{execution_id}/logs$", status=503, times=2)
    result = digest(tk, execution_id)
    assert result.log_note is None and result.log_tail


def test_an_unreadable_execution_still_gives_the_logs_end(tk: TestkubeStandin) -> None:
    execution_id = finished(tk, "dg-exec-502", "failed")
    tk.inject(method="GET", path=f"/test-workflow-executions/{execution_id}$", status=502, times=3)
    result = digest(tk, execution_id)
    assert result.step_name is None
    assert result.log_note == "execution details unreadable: Testkube answered 502"
    assert result.short().startswith("no failed step reported; status unknown: curl: (7)")


def test_an_unknown_execution_is_a_digest_too(tk: TestkubeStandin) -> None:
    result = digest(tk, "0123456789abcdef01234567")
    assert result.log_note == "execution details not found (404); log not found (404)"


def test_a_too_large_log_keeps_its_end_from_a_line_start_and_says_so(tk: TestkubeStandin) -> None:
    lines = tuple(f"line {i:04d} " + "x" * 80 for i in range(200))
    execution_id = finished(tk, "dg-big", "failed", Script(steps=("Run",), failing_step="Run", failing_lines=lines))
    whole = logs(tk, execution_id, 1 << 20)
    assert not whole.cut and whole.size == len(whole.text.encode())

    cut = logs(tk, execution_id, 2048)
    assert cut.cut and cut.size == whole.size
    assert len(cut.text.encode()) <= 2048 and whole.text.endswith(cut.text)
    assert cut.text.startswith("20")  # a whole line: its timestamp first

    result = digest(tk, execution_id, max_log_bytes=2048, tail_lines=2)
    assert result.log_note == "log larger than 2 KiB: read its last 2 KiB"
    assert result.log_tail[-1].startswith("line 0199 ")
    assert result.step_name == "Run"


def test_get_logs_errors_are_typed_and_never_carry_the_token(tk: TestkubeStandin) -> None:
    execution_id = finished(tk, "dg-typed", "failed")
    tk.inject(method="GET", path=f"/{execution_id}/logs$", status=503)
    with pytest.raises(TestkubeUnavailable) as unavailable:
        logs(tk, execution_id, 1024)
    with pytest.raises(NotFoundError) as missing:
        logs(tk, "0123456789abcdef01234567", 1024)
    for error in (unavailable.value, missing.value):
        assert "s3cret-token" not in str(error) and "s3cret-token" not in repr(error.__dict__)
    assert unavailable.value.status == 503


def test_byte_size() -> None:
    assert [byte_size(n) for n in (1 << 20, 2048, 1500, 3 << 30)] == ["1 MiB", "2 KiB", "1500 bytes", "3 GiB"]
