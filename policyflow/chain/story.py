"""The run's story: what each step found and did, in domain words.

In a violation's own run these lines are INFO, so its Logs tab tells what happened (the violation,
the execution started, its result and why, what was written where). Inside a batch they are DEBUG,
and the batch tells one line per violation instead (:func:`told_in_summary`): a storm of a thousand
violations would otherwise send five thousand log rows to the Prefect API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_IN_SUMMARY: ContextVar[bool] = ContextVar("policyflow_story_in_summary", default=False)


def story(logger: logging.Logger, title: str, message: str, *args: Any) -> None:
    """One line of the story of the violation ``title``."""
    logger.log(logging.DEBUG if _IN_SUMMARY.get() else logging.INFO, "%s: " + message, title, *args)


@contextmanager
def told_in_summary() -> Iterator[None]:
    """Steps run inside this block (and the tasks it starts) tell their story at DEBUG."""
    token = _IN_SUMMARY.set(True)
    try:
        yield
    finally:
        _IN_SUMMARY.reset(token)
