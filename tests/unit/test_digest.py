"""The failure digest (pure): which step failed, the log split by Testkube's hints, redaction, bounds
and the renderings."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from policyflow.domain.digest import EVENT_NOTE_LIMIT, FailureDigest, digest_of, failing_step
from policyflow.domain.redact import LINE_LIMIT, REDACTED, bound_line, clean, redact
from policyflow.domain.testlog import split_log, strip_timestamp, tail
from policyflow.domain.testrun import Execution, ExecutionDetail, StepResult, StepSignature

TS = "2026-01-15T10:35:14.020123456Z "


def hint(ref: str) -> str:
    return f"\n\x01\x05\x06{ref}\x03start\x03\n"


SIGNATURE = (
    StepSignature("rwait01", "Wait for the app"),
    StepSignature("rgroup5", "Tests", (StepSignature("rsmoke2", "Run smoke test"), StepSignature("rsave03", ""))),
)


def detail(steps: dict[str, StepResult], status: str = "failed",
           initialization: StepResult | None = None) -> ExecutionDetail:
    return ExecutionDetail(Execution("6968c1e0a1b2c3d4e5f60718", "smoke-1", "smoke", status, {}), SIGNATURE, steps,
                           initialization or StepResult("passed"))


# ---- the failing step


def test_the_failing_leaf_comes_before_its_failed_group() -> None:
    steps = {"rwait01": StepResult("passed"), "rgroup5": StepResult("failed"),
             "rsmoke2": StepResult("failed", exit_code=7), "rsave03": StepResult("skipped")}
    step = failing_step(SIGNATURE, steps)
    assert step is not None
    assert (step.ref, step.name, step.status, step.exit_code) == ("rsmoke2", "Run smoke test", "failed", 7)


def test_leaves_are_taken_depth_first_in_signature_order() -> None:
    steps = {"rwait01": StepResult("timeout", "timed out"), "rsmoke2": StepResult("failed")}
    step = failing_step(SIGNATURE, steps)
    assert step is not None and step.ref == "rwait01"


def test_a_group_answers_when_none_of_its_leaves_does() -> None:
    step = failing_step(SIGNATURE, {"rgroup5": StepResult("aborted", "The execution has been aborted.")})
    assert step is not None and (step.ref, step.name) == ("rgroup5", "Tests")


def test_a_step_without_a_name_is_shown_by_its_category_or_ref() -> None:
    step = failing_step(SIGNATURE, {"rsave03": StepResult("canceled")})
    assert step is not None and step.name == "rsave03"


def test_a_failed_initialization_comes_first() -> None:
    step = failing_step(SIGNATURE, {"rsmoke2": StepResult("skipped")}, StepResult("failed", "image pull failed"))
    assert step is not None and (step.ref, step.name, step.error_message) == ("", "Initializing", "image pull failed")


def test_results_the_signature_does_not_name_are_still_found() -> None:
    step = failing_step((), {"rzzz9": StepResult("aborted")})
    assert step is not None and step.ref == "rzzz9"


def test_no_failing_step() -> None:
    assert failing_step(SIGNATURE, {"rwait01": StepResult("passed"), "rsmoke2": StepResult("skipped")}) is None


# ---- the log


def test_split_log_files_lines_under_the_step_hints_without_timestamps() -> None:
    text = (f"{TS}init" + hint("rwait01") + f"{TS}waiting\n{TS}up" + hint("rsmoke2")
            + f"{TS}+ curl\n2026-01-15T10:35:14.020123456+02:00 curl: (7)\n{TS}\n")
    assert split_log(text) == {"": ["init"], "rwait01": ["waiting", "up"], "rsmoke2": ["+ curl", "curl: (7)", ""]}


def test_split_log_hides_output_instructions_and_joins_a_restarted_step() -> None:
    text = (hint("ra") + f"{TS}one\n\x01\x05ra\x03status\x04\"passed\"\x03" + hint("rb") + f"{TS}two"
            + hint("ra") + f"{TS}three")
    assert split_log(text) == {"ra": ["one", "three"], "rb": ["two"]}


def test_split_log_files_a_cut_logs_first_lines_under_the_given_ref() -> None:
    assert split_log(f"{TS}tail end" + hint("rb") + f"{TS}x", first_ref="?") == {"?": ["tail end"], "rb": ["x"]}


def test_strip_timestamp_leaves_other_lines_alone() -> None:
    assert strip_timestamp("2026-01-15 not a timestamp") == "2026-01-15 not a timestamp"
    assert strip_timestamp(TS + "x") == "x"


def test_tail() -> None:
    assert tail(["a", "b", "c"], 2) == ["b", "c"]
    assert tail(["a"], 5) == ["a"]
    assert tail(["a"], 0) == []


# ---- redaction and bounds


SECRETS = [
    ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
    ("curl -H 'authorization: Basic dXNlcjpwYXNz' x", "dXNlcjpwYXNz"),
    ("password=hunter2&user=bob", "hunter2"),
    ("DB_PASSWORD: s3cr3t!", "s3cr3t!"),
    ("api_key=0123456789", "0123456789"),
    ('{"password": "p\\"w0rd", "user": "u"}', 'p\\"w0rd'),
    ("client_secret='abc def'", "abc def"),
    ("--token zz9-plural-z-alpha", "zz9-plural-z-alpha"),
    ("aws AKIAIOSFODNN7EXAMPLE in use", "AKIAIOSFODNN7EXAMPLE"),
    ("gh ghp_1234567890abcdefghijABCDEFGHIJ123456", "ghp_1234567890abcdefghijABCDEFGHIJ123456"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"),
    ("git clone https://bob:pa55@github.com/x/y", "bob:pa55"),
    ("testkube tkcapi_0123456789abcdef0123", "tkcapi_0123456789abcdef0123"),
]


def test_each_credential_shape_is_redacted() -> None:
    for text, secret in SECRETS:
        shown = redact(text)
        assert secret not in shown, (text, shown)
        assert REDACTED in shown


def test_a_private_key_block_is_redacted_whole_even_unterminated() -> None:
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAKC\n-----END RSA PRIVATE KEY-----\nafter"
    assert redact("before\n" + block) == f"before\n{REDACTED}\nafter"
    assert "MIIEow" not in redact("-----BEGIN PRIVATE KEY-----\nMIIEow\nIBAAKC")


def test_redaction_keeps_ordinary_text() -> None:
    text = "curl: (7) Failed to connect to nginx.default.svc port 80: the password is wrong"
    assert redact(text) == text


_TOKEN = st.one_of(
    st.from_regex(r"ghp_[A-Za-z0-9]{36}", fullmatch=True),
    st.from_regex(r"AKIA[0-9A-Z]{16}", fullmatch=True),
    st.from_regex(r"eyJ[A-Za-z0-9_-]{10,30}\.[A-Za-z0-9_-]{10,30}\.[A-Za-z0-9_-]{10,30}", fullmatch=True),
    st.from_regex(r"tkcapi_[a-f0-9]{32}", fullmatch=True),
)
_SHAPE = st.sampled_from(["{}", "Bearer {}", "token={}", '"apikey": "{}"', "https://u:{}@h/", "x{}y"])


@given(prefix=st.text(max_size=40), token=_TOKEN, shape=_SHAPE, suffix=st.text(max_size=40))
def test_a_token_embedded_anywhere_never_survives(prefix: str, token: str, shape: str, suffix: str) -> None:
    digest = digest_of(None, TS + prefix + shape.format(token) + suffix + "\nlast", tail_lines=5)
    assert all(token not in line for line in digest.log_tail)
    assert token not in redact(clean(prefix + shape.format(token) + suffix))


def test_a_control_character_cannot_hide_a_token() -> None:
    token = "ghp_1234567890abcdefghijABCDEFGHIJ123456"
    hidden = token[:10] + "\x00\x1b[31m" + token[10:]
    digest = digest_of(None, TS + hidden, tail_lines=5)
    assert token not in "".join(digest.log_tail)


def test_bound_line_removes_controls_and_cuts() -> None:
    assert bound_line("\x1b[31mred\x1b[0m\tx\x07\u202e") == "red    x"
    cut = bound_line("a" * 1000)
    assert len(cut) == LINE_LIMIT and cut.endswith("…")


# ---- the digest and its renderings


FAILING_LOG = (f"{TS}init" + hint("rwait01") + f"{TS}up" + hint("rsmoke2") + f"{TS}+ curl http://app\n"
               + f"{TS}Authorization: Bearer tkcapi_0123456789abcdef\n"
               + f"{TS}curl: (7) Failed to connect to app port 80: Couldn't connect to server")
FAILED = {"rwait01": StepResult("passed"), "rgroup5": StepResult("failed"), "rsmoke2": StepResult("failed", "", 7),
          "rsave03": StepResult("skipped")}


def test_digest_of_a_failed_run() -> None:
    digest = digest_of(detail(FAILED), FAILING_LOG, tail_lines=2)
    assert (digest.step_name, digest.step_ref, digest.step_status, digest.exit_code) == (
        "Run smoke test", "rsmoke2", "failed", 7)
    assert digest.log_tail == ("Authorization: [REDACTED]", "curl: (7) Failed to connect to app port 80: Couldn't "
                               "connect to server")
    assert digest.short() == ('step "Run smoke test" failed (exit 7): curl: (7) Failed to connect to app port 80: '
                              "Couldn't connect to server")
    assert digest.log_note is None


def test_short_and_first_line_are_one_bounded_line() -> None:
    digest = digest_of(detail({"rsmoke2": StepResult("failed", "boom\n" + "x" * 3000, 1)}), None, tail_lines=20)
    assert "\n" not in digest.short() and len(digest.short(80)) == 80
    assert len(digest.first_line()) <= EVENT_NOTE_LIMIT


def test_a_run_without_a_failing_step_still_says_something() -> None:
    digest = digest_of(detail({"rwait01": StepResult("passed")}, status="aborted"), f"{TS}last words", tail_lines=5)
    assert digest.short() == "no failed step reported; status aborted: last words"


def test_a_digest_without_anything_read_says_so() -> None:
    digest = digest_of(None, None, tail_lines=5, log_note="log not found (404)")
    assert digest.short() == "no failed step reported; status unknown: log not found (404)"
    assert digest.payload()["logNote"] == "log not found (404)"


def test_markdown_fence_cannot_be_closed_by_the_log() -> None:
    log = hint("rsmoke2") + f"{TS}````\n{TS}# not a heading\n{TS}`````` end"
    digest = digest_of(detail(FAILED), log, tail_lines=20)
    text = digest.markdown("https://dash/execution/1")
    fences = re.findall(r"^`{3,}.*$", text, flags=re.MULTILINE)
    assert fences[0] == "```````text" and fences[-1] == "```````"
    assert all(len(inner.split(" ")[0]) < 7 for inner in fences[1:-1])  # none inside is as long
    assert "[Execution in Testkube](<https://dash/execution/1>)" in text
    assert "- Exit code: 7" in text


def test_payload_is_bounded_and_json_able() -> None:
    import json

    lines = "\n".join(f"{TS}{'y' * 400}" for _ in range(500))
    digest = digest_of(detail(FAILED), hint("rsmoke2") + lines, tail_lines=500)
    payload = digest.payload()
    assert len(json.dumps(payload)) < 12_000
    assert payload["step"] == "Run smoke test" and payload["exitCode"] == 7
    assert all(len(line) <= LINE_LIMIT for line in payload["logTail"])


def test_a_cut_log_without_hints_is_the_running_steps() -> None:
    digest = digest_of(detail(FAILED), f"{TS}end of curl output", tail_lines=5, log_cut=True)
    assert digest.log_tail == ("end of curl output",)
    uncut = digest_of(detail(FAILED), f"{TS}init only", tail_lines=5)
    assert uncut.log_tail == ()  # the initialization's lines are not the failing step's


def test_failure_digest_is_frozen() -> None:
    digest = FailureDigest("failed", None, None, None, "", None, ())
    try:
        digest.log_note = "x"  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("FailureDigest must be immutable")
