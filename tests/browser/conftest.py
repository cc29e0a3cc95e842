"""The browser suite: headless Chromium against the Prefect UI of ``policyflow demo``."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives headless Chromium (Debian's /usr/bin/chromium) against the demo's Prefect UI"
    )
