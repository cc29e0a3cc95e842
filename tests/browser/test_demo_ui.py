"""What a person sees in the Prefect UI of ``policyflow demo``: headless Chromium, driven by Playwright,
against the demo's real Prefect server (API, UI, scheduler) and the stand-ins.

The browser is Debian's ``/usr/bin/chromium`` (``apt-get install chromium``); Playwright only drives it
and never downloads one. Without Chromium the test is skipped on a workstation and fails under CI
(``CI`` set), which installs it. Full-page screenshots of every page go to ``test-output/browser/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest

from tests.helpers import wait_until
from tests.specs import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(360)]

TITLE = "require-resources/require-resources-in-deployment default/Deployment/nginx-no-cpu"
#: The demo's violation whose smoke test fails (shop/checkout's app is down).
FAILING = "require-resources/require-resources-in-deployment shop/Deployment/checkout"
HEADLINE = 'step "Run smoke test" failed (exit 7)'
TASKS = ("fetch-violation", "trigger-testkube", "await-result", "annotate-report")
SHOTS = ROOT / "test-output" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 30_000
# The SPA scrolls inside a div, not the document: the tallest scrolled element's full height.
CONTENT_HEIGHT_JS = """() => Math.max(document.documentElement.scrollHeight, ...[...document.querySelectorAll("*")]
    .filter(e => ["auto", "scroll"].includes(getComputedStyle(e).overflowY)).map(e => e.scrollHeight))"""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> NoReturn:
    """Skip on a workstation, fail under CI (which installs Chromium and Playwright)."""
    if in_ci():
        pytest.fail(f"{what}; CI must provide it (.ci/run installs chromium and chromium-driver with apt-get)")
    pytest.skip(f"{what} (apt-get install chromium chromium-driver; pip install -e '.[dev]'); CI runs this test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from the system (never a downloaded one)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright (the dev extra) is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    """``policyflow demo`` in a subprocess (its own session, so no process outlives the test); the UI's URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and not k.startswith("POLICYFLOW_")}
    env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(tmp_path / "client-home")})
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "policyflow.cli", "demo", "--port", str(port), "--interval", "3",
             "--home", str(tmp_path / "prefect-home")],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )
        try:
            def ready() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"policyflow demo exited with {process.returncode}")
                return f"Prefect UI: {url}" in log_path.read_text(errors="replace")

            wait_until("the demo's 'Prefect UI:' line", ready, timeout=150)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)  # the Prefect runner shuts down gracefully on SIGTERM
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            # Whatever the demo started and left behind (the Prefect server, flow-run processes).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            print(f"--- tail of {log_path} (policyflow demo, exit status {process.returncode}):")
            print(log_path.read_text(errors="replace")[-6000:])


def api(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(f"{url}/api{path}", json=body, timeout=10)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()
    return result


def completed_violation_run(url: str, title: str = TITLE) -> dict[str, Any] | None:
    try:
        runs = api(url, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [title]}}})
    except httpx.HTTPError:
        return None
    return next((run for run in runs if run["state_type"] == "COMPLETED"), None)


class Screenshots:
    """Full-page screenshots into test-output/browser/, their paths printed with the test's output."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.paths: list[Path] = []
        SHOTS.mkdir(parents=True, exist_ok=True)
        for old in SHOTS.glob("*.png"):
            old.unlink()

    def take(self, name: str, *, settle_ms: int = 0) -> Path:
        page = self.page
        page.wait_for_load_state("networkidle")
        size = page.viewport_size or {"width": 1440, "height": 900}
        height = int(page.evaluate(CONTENT_HEIGHT_JS))
        page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 8000)})
        page.wait_for_load_state("networkidle")
        if settle_ms:
            page.wait_for_timeout(settle_ms)  # the run graph (a canvas) draws itself: only for the picture
        path = SHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        page.set_viewport_size(size)
        self.paths.append(path)
        print(f"screenshot: {path}")
        return path


def test_the_demo_ui_shows_the_violation_run_its_task_runs_and_its_artifact(
    browser: Browser, demo: str, record_property: Callable[[str, object], None]
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    run = wait_until(f"a COMPLETED flow run named {TITLE!r}", lambda: completed_violation_run(demo), timeout=150)
    task_runs = api(demo, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert sorted(t["name"].rsplit("-", 1)[0] for t in task_runs) == sorted(TASKS)
    (artifact,) = [a for a in api(demo, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
                   if a["key"].startswith("violation-")]
    assert artifact["type"] == "markdown"

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    shots = Screenshots(page)
    try:
        # The runs page lists the violation's run by its name (among the scheduled policy-watch polls).
        page.goto(f"{demo}/runs", wait_until="networkidle")
        run_link = page.get_by_role("link", name=TITLE, exact=True)
        expect(run_link).to_be_visible()
        page.get_by_role("searchbox", name="Search by flow run name").fill("deployment default/Deployment/nginx-no-cpu")
        expect(page.get_by_role("link", name=TITLE, exact=True)).to_have_count(1)
        expect(page.get_by_text(re.compile(r"^1 runs?$"))).to_be_visible()
        shots.take("01-runs-violation-run")

        # Its flow-run page: name, state, the four task runs (graph and tab), the artifact.
        run_link.click()
        expect(page).to_have_url(re.compile(rf"/flow-run/{run['id']}"))
        expect(page.get_by_text(TITLE, exact=True).first).to_be_visible()
        expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
        expect(page.get_by_text("4 Task runs", exact=True).first).to_be_visible()
        expect(page.get_by_text("workflow:smoke-nova", exact=True).first).to_be_visible()
        shots.take("02-flow-run", settle_ms=1000)

        tabs = page.get_by_role("tablist")
        tabs.get_by_text("Task Runs", exact=True).click()
        expect(page).to_have_url(re.compile(r"tab=Task\+Runs"))
        for task_run in task_runs:
            expect(page.get_by_role("link", name=task_run["name"], exact=True)).to_be_visible()
        for task in TASKS:
            expect(page.get_by_role("link", name=re.compile(rf"^{task}-\w+$"))).to_have_count(1)
        shots.take("03-flow-run-task-runs")

        tabs.get_by_text("Artifacts", exact=True).click()
        expect(page).to_have_url(re.compile(r"tab=Artifacts"))
        expect(page.get_by_text(artifact["key"], exact=True)).to_be_visible()
        expect(page.get_by_text(re.compile(r"^markdown$", re.IGNORECASE))).to_be_visible()  # shown upper-case
        shots.take("04-flow-run-artifacts")

        # The artifacts page: the violation's markdown and the poll's table. The poll writes its
        # table when all its chains are done, which can be after this one: the page shows what there
        # is when it loads, so it loads once the table is there.
        wait_until("the poll's policy-watch-cycle artifact", lambda: api(
            demo, "/artifacts/filter", {"artifacts": {"key": {"any_": ["policy-watch-cycle"]}}}), timeout=150)
        page.goto(f"{demo}/artifacts", wait_until="networkidle")
        expect(page.get_by_text(artifact["key"], exact=True)).to_be_visible()
        expect(page.get_by_text("policy-watch-cycle", exact=True)).to_be_visible()
        shots.take("05-artifacts")

        # The violation's artifact itself, as rendered markdown.
        page.get_by_text(artifact["key"], exact=True).click()
        expect(page).to_have_url(re.compile(rf"/artifacts/key/{artifact['key']}$"))
        page.get_by_role("link", name=artifact["id"][:8], exact=True).click()
        expect(page).to_have_url(re.compile(rf"/artifacts/artifact/{artifact['id']}$"))
        table = page.get_by_role("table").first
        for label, value in (("Policy", "require-resources"), ("Rule", "require-resources-in-deployment"),
                             ("Resource", "default/Deployment/nginx-no-cpu"), ("Workflow", "smoke-nova"),
                             ("Status", "passed")):
            expect(table.get_by_role("row", name=f"{label} {value}", exact=True)).to_be_visible()
        shots.take("06-artifact-violation")

        # Why shop/checkout's smoke test failed, without leaving Prefect: the run's Logs tab tells the
        # story, its artifact holds the failing step, the exit code and the log's end (token redacted).
        failed = wait_until(f"a finished run named {FAILING!r}", lambda: completed_violation_run(demo, FAILING),
                            timeout=150)
        page.goto(f"{demo}/runs/flow-run/{failed['id']}?tab=Logs", wait_until="networkidle")
        expect(page.get_by_text(re.compile(r"started TestWorkflow smoke-shop execution smoke-shop-\d+")).first) \
            .to_be_visible()
        expect(page.get_by_text(re.compile(r"execution smoke-shop-\d+ failed after .*" + re.escape(HEADLINE))).first) \
            .to_be_visible()
        expect(page.get_by_text(re.compile(r"recorded failed on PolicyReport shop/")).first).to_be_visible()
        shots.take("07-failed-run-logs")
        (failed_artifact,) = [a for a in api(demo, "/artifacts/filter",
                                             {"artifacts": {"flow_run_id": {"any_": [failed["id"]]}}})
                              if a["key"].startswith("violation-")]
        page.goto(f"{demo}/artifacts/artifact/{failed_artifact['id']}", wait_until="networkidle")
        expect(page.get_by_role("heading", name=HEADLINE)).to_be_visible()
        expect(page.get_by_text("Exit code: 7")).to_be_visible()
        expect(page.get_by_text(re.compile(r"curl: \(7\) Failed to connect")).first).to_be_visible()
        expect(page.get_by_text("Authorization: [REDACTED]")).to_be_visible()
        shots.take("08-failed-run-digest")

        # The health table, a version per poll that changed anything.
        page.goto(f"{demo}/artifacts/key/policy-health", wait_until="networkidle")
        expect(page.get_by_text("policy-health", exact=True).first).to_be_visible()
        page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first.click()
        expect(page.get_by_role("table").first).to_contain_text("require-resources-in-deployment")
        expect(page.get_by_text(re.compile(r"^Policy health by rule"))).to_be_visible()
        shots.take("09-policy-health")
    except BaseException:
        with contextlib.suppress(Exception):
            shots.take("failure")
        raise
    finally:
        context.close()
        record_property("screenshots", [str(p) for p in shots.paths])
        print("screenshots:\n" + "\n".join(f"  {p}" for p in shots.paths))
