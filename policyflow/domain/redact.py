"""Making text from a test's output safe to show elsewhere (pure): credentials replaced, control
characters removed, lengths bounded.

A test's log and error messages end up on the report, in Kubernetes Events and in Prefect, where
more people can read them than can read the test itself; a test that prints its own credentials
must not publish them. Redaction errs on the side of hiding too much: a harmless value that looks
like a secret is hidden too.
"""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

_KEY_WORDS = (
    r"pass(?:word|wd|phrase)?|pwd|token|secret|api[_-]?key|access[_-]?key|private[_-]?key|client[_-]?secret"
    r"|credentials?|auth[_-]?token|session[_-]?id|cookie"
)
# Whole matches replaced by REDACTED. No leading \b: a token glued to other text is still a token.
_TOKENS = re.compile(
    "|".join(
        (
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)",
            r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}",  # AWS access key ids
            r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{16,}",  # GitHub tokens
            r"github_pat_[A-Za-z0-9_]{16,}",
            r"glpat-[A-Za-z0-9_-]{16,}",  # GitLab
            r"xox[abeprs]-[A-Za-z0-9-]{8,}",  # Slack
            r"tkcapi_[A-Za-z0-9]{8,}",  # Testkube Cloud API tokens
            r"eyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){0,2}",  # JWTs (base64url of '{"')
        )
    ),
    re.DOTALL,
)
# Keep the name, hide the value.
_AUTHORIZATION = re.compile(r"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)[^\r\n\"']+")
_BEARER = re.compile(r"(?i)(\b(?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{6,}")
_KEY_VALUE = re.compile(
    rf"(?i)([\w.-]*(?:{_KEY_WORDS})[\w.-]*[\"']?\s*[:=]\s*)"
    r"(\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[^\s&,;\"'<>]+)"
)
_FLAG_VALUE = re.compile(rf"(?i)(--?[\w-]*(?:{_KEY_WORDS})[\w-]*\s+)(?!-)(\S+)")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")


def redact(text: str) -> str:
    """``text`` with everything that looks like a credential replaced by ``[REDACTED]``."""
    text = _TOKENS.sub(REDACTED, text)
    text = _URL_USERINFO.sub(rf"\g<1>{REDACTED}@", text)
    text = _AUTHORIZATION.sub(rf"\g<1>{REDACTED}", text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    text = _FLAG_VALUE.sub(rf"\g<1>{REDACTED}", text)

    def quoted(m: re.Match[str]) -> str:
        value = m.group(2)
        quote = value[0] if value[:1] in ("'", '"') else ""
        return f"{m.group(1)}{quote}{REDACTED}{quote}"

    return _KEY_VALUE.sub(quoted, text)


#: Longest line shown anywhere (a minified bundle or a base64 blob is one "line").
LINE_LIMIT = 300
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# C0 (tab kept) and C1 controls, DEL, line/paragraph separators, bidi overrides and isolates.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """``text`` without terminal colours and control characters (newlines kept, tabs as spaces).

    Runs before :func:`redact`: a control character inside a token would hide it from redaction and
    then vanish from the shown line, giving the token back."""
    lines = (_CONTROL.sub("", _ANSI.sub("", line)).replace("\t", "    ") for line in text.split("\n"))
    return "\n".join(lines)


def bound_line(line: str, limit: int = LINE_LIMIT) -> str:
    """One displayable line: cleaned (:func:`clean`, newlines too), at most ``limit`` characters
    (``…`` where it was cut)."""
    shown = clean(line).replace("\n", " ").rstrip()
    return shown if len(shown) <= limit else shown[: max(limit - 1, 0)] + "…"
