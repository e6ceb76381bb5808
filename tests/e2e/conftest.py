"""Browser tests: Playwright driving Debian's Chromium against a live server, a real worker and Redis.

The worker, the roots and the browser are package-scoped: they end with the last browser test, so
the worker never picks up jobs that later tests enqueue for workers of their own.

On a machine without Chromium these tests are skipped with a message; in CI (``E2E_REQUIRED=1``)
a missing browser fails the run instead.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.live import LiveWorker

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
PASSWORD = "e2e-password-not-secret"
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# The demo run's recipe by dotted path (what ``Run.recipe`` holds and ``load_recipe`` accepts): freeze
# jobs feed its sample input, save jobs train it.
DEMO_RECIPE = "persistence.recipes.antispam.AntiSpamRecipe"

# Installed with ``Tracked.watch()``: every page load and every value a <progress> bar shows, kept
# in sessionStorage so that they survive the page reloading itself (htmx's HX-Refresh). That is how
# a test proves a page updated by itself (no new load) and that a bar moved.
ACTIVITY_SCRIPT = """
(() => {
  const append = (key, item) => {
    const items = JSON.parse(sessionStorage.getItem(key) || "[]");
    items.push(item);
    sessionStorage.setItem(key, JSON.stringify(items));
  };
  append("e2e-loads", location.pathname + location.search);
  const last = {};
  const record = () => document.querySelectorAll("progress[aria-label]").forEach((bar) => {
    const label = bar.getAttribute("aria-label");
    const value = Number(bar.getAttribute("value"));
    if (last[label] !== value) { last[label] = value; append("e2e-progress", [label, value]); }
  });
  document.addEventListener("DOMContentLoaded", () => {
    record();
    new MutationObserver(record).observe(document.body, { childList: true, subtree: true, attributes: true });
  });
})();
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.environ.get("E2E_REQUIRED") == "1":
        raise pytest.UsageError(f"E2E_REQUIRED=1 but no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver")
    skip = pytest.mark.skip(
        reason=f"browser tests need Chromium at {CHROMIUM}: `apt-get install chromium chromium-driver` (Debian) "
        "or set CHROMIUM_PATH"
    )
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="package")
def e2e_roots(tmp_path_factory):
    """Checkpoint and export roots for the whole browser session (the worker is started with them)."""
    from django.conf import settings

    base = tmp_path_factory.mktemp("e2e")
    saved = settings.CHECKPOINT_ROOTS, settings.EXPORT_ROOT, settings.SERVING_ROOT
    settings.CHECKPOINT_ROOTS = [(base / "checkpoints").resolve()]
    settings.EXPORT_ROOT = (base / "exports").resolve()
    settings.SERVING_ROOT = (base / "serving").resolve()
    settings.CHECKPOINT_ROOTS[0].mkdir()
    settings.EXPORT_ROOT.mkdir()
    yield settings.CHECKPOINT_ROOTS[0]
    settings.CHECKPOINT_ROOTS, settings.EXPORT_ROOT, settings.SERVING_ROOT = saved


@pytest.fixture(scope="package")
def e2e_worker(django_db_setup, django_db_blocker, e2e_roots, tmp_path_factory):
    """One real RQ worker for the browser session, sharing the test database and Redis."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with django_db_blocker.unblock():
        worker = LiveWorker(log_path=log).start()
    yield worker
    worker.stop()


@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in the test thread; Django would then refuse
    # the test's own (synchronous) database calls as if they came from async code.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


class Tracked:
    """A page plus everything that went wrong on it: console errors and failed requests."""

    def __init__(self, page, base_url: str):
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", self._request_failed)
        page.on("response", self._response)

    def _console(self, message) -> None:
        if message.type != "error":
            return
        # Chromium also logs every HTTP error response; a status the test expects is not a problem
        # (an unexpected one is reported by ``_response`` already).
        status = re.match(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        if status and int(status.group(1)) in self.expected_statuses:
            return
        self.problems.append(f"console: {message.text}")

    def _request_failed(self, request) -> None:
        # A download that the test saves itself is reported as "aborted" by Chromium.
        if "net::ERR_ABORTED" not in (request.failure or ""):
            self.problems.append(f"request failed: {request.url} {request.failure}")

    def _response(self, response) -> None:
        if response.status >= 500 or (response.status >= 400 and response.status not in self.expected_statuses):
            self.problems.append(f"HTTP {response.status}: {response.url}")

    expected_statuses: set[int] = set()

    def goto(self, path: str):
        return self.page.goto(self.base_url + path)

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def watch(self) -> None:
        """Record page loads and progress bar values from now on (see ``ACTIVITY_SCRIPT``)."""
        self.page.add_init_script(ACTIVITY_SCRIPT)

    def loads(self) -> list[str]:
        """Path and query of every page load since ``watch()``, oldest first."""
        return self.page.evaluate("JSON.parse(sessionStorage.getItem('e2e-loads') || '[]')")

    def progress_values(self, label_start: str) -> list[int]:
        """Successive values of the progress bars whose aria-label starts with ``label_start``."""
        seen = self.page.evaluate("JSON.parse(sessionStorage.getItem('e2e-progress') || '[]')")
        return [value for label, value in seen if label.startswith(label_start)]

    def login(self, username: str, password: str = PASSWORD) -> None:
        self.goto("/accounts/login/")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", password)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(re.compile(r".*/$"))


@pytest.fixture
def tracked(browser, live_server, e2e_roots):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    tracked = Tracked(page, live_server.url)
    yield tracked
    context.close()
    assert not tracked.problems, "\n".join(tracked.problems)


def _user_with_role(username: str, role: str):
    from django.contrib.auth.models import User

    from dashboard.access import ensure_roles

    user = User.objects.create_user(username, password=PASSWORD)
    user.groups.add(ensure_roles()[role])
    return user


@pytest.fixture
def e2e_maintainer(transactional_db):
    from dashboard.access import MAINTAINER

    return _user_with_role("mia", MAINTAINER)


@pytest.fixture
def e2e_operator(transactional_db):
    from dashboard.access import OPERATOR

    return _user_with_role("otto", OPERATOR)


@pytest.fixture
def e2e_viewer(transactional_db):
    from dashboard.access import VIEWER

    return _user_with_role("vic", VIEWER)


@pytest.fixture(scope="package")
def demo_directory(e2e_roots):
    """A real trained run: the anti-spam recipe, 60 checkpoints (two history pages)."""
    from persistence.training import make_demo_run

    directory = e2e_roots / "antispam"
    result = make_demo_run(str(directory), steps=300, save_every=5)
    return directory, result


@pytest.fixture
def demo_run(transactional_db, demo_directory):
    from dashboard import recording, scanning
    from dashboard.models import Run

    directory, result = demo_directory
    # Not ``result.recipe`` (the recipe's short name "antispam"): Run.recipe is a dotted path.
    run = Run.objects.create(name="antispam", directory=str(directory), recipe=DEMO_RECIPE)
    scanning.scan(run, full=True)
    recording.record_metrics(run, {c.prefix: c.metrics for c in result.checkpoints})
    return run


@pytest.fixture
def make_run(transactional_db, demo_directory, e2e_roots):
    """``make_run(name, copy_demo=...)``: a run of the test's own, in a new directory under the root.

    For flows that delete or add checkpoints: the session's demo directory stays untouched.
    ``copy_demo=True`` copies it (mtimes included, so saved times and ages are the demo's),
    then scans and records the training metrics; otherwise the directory starts empty.
    """
    from dashboard import recording, scanning
    from dashboard.models import Run

    def make(name: str, *, copy_demo: bool = False) -> Run:
        directory = e2e_roots / name
        shutil.rmtree(directory, ignore_errors=True)
        if copy_demo:
            shutil.copytree(demo_directory[0], directory)
        else:
            directory.mkdir()
        run = Run.objects.create(name=name, directory=str(directory), recipe=DEMO_RECIPE)
        if copy_demo:
            scanning.scan(run, full=True)
            recording.record_metrics(run, {c.prefix: c.metrics for c in demo_directory[1].checkpoints})
        return run

    return make


def clean_screenshots() -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
