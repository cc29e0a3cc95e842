"""Small helpers the test suites share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(what: str, probe: Callable[[], Any], timeout: float = 60.0, every: float = 0.05) -> Any:
    """Poll ``probe`` until it returns something truthy (returned); AssertionError naming ``what`` after
    ``timeout`` seconds. For outcomes that other processes or threads bring about."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
