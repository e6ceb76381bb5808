"""Browser tests: Playwright driving Debian's Chromium against a live server, a real worker and Redis.

The worker, the roots and the browser are package-scoped: they end with the last browser test, so
the worker never picks up jobs that later tests enqueue for workers of their own.

Every flow about a run's checkpoints runs twice, once per storage backend (``backend``: "local",
"s3"): the runs of the s3 variant live in a bucket of the loopback S3 server, which is a checkpoint
root of the live server and of the worker for the whole session. ``@pytest.mark.local_only(why)``
keeps a test that is about something else to the local variant.

On a machine without Chromium these tests are skipped with a message; in CI (``E2E_REQUIRED=1``)
a missing browser fails the run instead.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e.backends import BACKENDS, CREDENTIALS, LOCAL, Backend
from tests.live import LiveWorker, wait_for

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "local_only(reason): run a browser flow against local storage only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if any("backend" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize")):
        return  # the test names its backends itself
    names = [LOCAL] if metafunc.definition.get_closest_marker("local_only") else list(BACKENDS)
    metafunc.parametrize("backend", names, indirect=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """When a flow fails, say what the page said at that moment (its messages, e.g. that an action
    is not supported for runs in buckets) and where it was, beside the traceback."""
    report = yield
    tracked = getattr(item, "funcargs", {}).get("tracked")
    if report.when == "call" and report.failed and isinstance(tracked, Tracked) and not tracked.page.is_closed():
        try:
            said = tracked.page.locator(".messages, .message.error, [role=alert]").all_inner_texts()
            report.sections.append(("page at failure", "\n".join([tracked.page.url, *said])))
        except Exception as exc:  # the page may be gone with the failure; the traceback says enough
            report.sections.append(("page at failure", f"unreadable: {exc}"))
    return report


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
def e2e_bucket(s3_server):
    """The session's bucket, with the AWS environment pointing at the loopback server.

    Set in this process's environment for the whole session, before the worker starts: the live
    server (a thread here) and the worker (a child process) must both reach the bucket.
    """
    import uuid

    import boto3

    from tests.s3_server import FAKE_KEY_ID, FAKE_SECRET, Bucket

    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                patch.delenv(name)
        patch.setenv("AWS_ENDPOINT_URL", s3_server)
        patch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
        patch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        client = boto3.client("s3")
        name = f"e2e-{uuid.uuid4().hex[:16]}"
        client.create_bucket(Bucket=name)
        yield Bucket(name, client)


@pytest.fixture(scope="package")
def e2e_roots(tmp_path_factory, e2e_bucket):
    """Checkpoint and export roots for the whole browser session (the worker is started with them):
    a local directory, and the bucket's ``runs/`` prefix."""
    from django.conf import settings

    base = tmp_path_factory.mktemp("e2e")
    names = ("CHECKPOINT_ROOTS", "CHECKPOINT_OBJECT_ROOTS", "EXPORT_ROOT", "SERVING_ROOT", "STAGING_CACHE_DIR")
    saved = {name: getattr(settings, name) for name in names}
    settings.CHECKPOINT_ROOTS = [(base / "checkpoints").resolve()]
    settings.CHECKPOINT_OBJECT_ROOTS = [e2e_bucket.url("runs")]
    settings.EXPORT_ROOT = (base / "exports").resolve()
    settings.SERVING_ROOT = (base / "serving").resolve()
    settings.STAGING_CACHE_DIR = (base / "stage").resolve()
    settings.CHECKPOINT_ROOTS[0].mkdir()
    settings.EXPORT_ROOT.mkdir()
    yield settings.CHECKPOINT_ROOTS[0]
    for name, value in saved.items():
        setattr(settings, name, value)


@pytest.fixture(scope="package")
def e2e_worker(django_db_setup, django_db_blocker, e2e_roots, tmp_path_factory):
    """One real RQ worker for the browser session, sharing the test database and Redis."""
    from django.conf import settings

    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with django_db_blocker.unblock():
        worker = LiveWorker(log_path=log, STAGING_CACHE_DIR=str(settings.STAGING_CACHE_DIR)).start()
    # Listening only once TensorFlow is imported: flows that time what the worker does (a bucket
    # run's periodic rescans) must not count its start.
    wait_for(lambda: "Listening on" in log.read_text(errors="replace") or worker.process.poll() is not None, 180,
             what="the worker to listen")
    assert worker.process.poll() is None, log.read_text(errors="replace")[-3000:]
    yield worker
    worker.stop()
    # Whatever the worker logged (job errors included) must not hold the credentials either.
    logged = log.read_bytes()
    assert not [c for c in CREDENTIALS if c in logged], f"the worker's log {log} shows the S3 credentials"


@pytest.fixture
def backend(request, e2e_roots, e2e_bucket) -> Backend:
    """Where this test's runs live: "local" (under the root) or "s3" (in the session's bucket)."""
    return Backend(request.param, local_root=e2e_roots, bucket=e2e_bucket)


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
    bodies_checked = 0
    closing = False

    def check_credentials(self) -> None:
        """From now on, search every page, fragment and API answer the browser gets for the S3
        credentials (headers too), and the final page at the end (``assert_no_credentials``)."""
        self.page.on("response", self._credentials_in_response)

    def _credentials_in_response(self, response) -> None:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items()).encode()
        if any(c in headers for c in CREDENTIALS):
            self.problems.append(f"S3 credentials in the headers of {response.url}")
        kind = response.headers.get("content-type", "")
        if 300 <= response.status < 400 or not kind.startswith(("text/", "application/json")):
            return  # redirects have no body; downloads and static files are not pages
        if "attachment" in response.headers.get("content-disposition", ""):
            return
        try:
            body = response.body()
        except Exception as exc:
            # A response the page navigated away from before its body was read (an htmx poll cut
            # short by a reload, say): Chromium no longer has it, and the page never showed it.
            # Or one still arriving (a live page polls) while the test closes the page.
            if "navigated away" not in str(exc) and not self.closing:
                self.problems.append(f"cannot read {response.url} to search it for credentials: {exc}")
            return
        self.bodies_checked += 1
        if any(c in body for c in CREDENTIALS):
            self.problems.append(f"S3 credentials in the body of {response.url}")

    def assert_no_credentials(self) -> None:
        if self.page.is_closed():
            return
        content = self.page.content().encode()
        assert not [c for c in CREDENTIALS if c in content], f"S3 credentials on {self.page.url}"
        assert self.bodies_checked, "no page was searched for the S3 credentials"

    def goto(self, path: str):
        return self.page.goto(self.base_url + path)

    # "-s3" for the flows run against a bucket, so they do not overwrite the local flows' pictures.
    shot_suffix = ""

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}{self.shot_suffix}.png"), full_page=True)

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
def tracked(request, browser, live_server, e2e_roots):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    tracked = Tracked(page, live_server.url)
    in_bucket = "backend" in request.fixturenames and request.getfixturevalue("backend").is_s3
    if in_bucket:
        tracked.check_credentials()
        tracked.shot_suffix = "-s3"
    yield tracked
    if in_bucket:
        tracked.assert_no_credentials()
    tracked.closing = True
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


@pytest.fixture(scope="package")
def demo_uploaded(demo_directory, e2e_roots, e2e_bucket) -> str:
    """The demo run's files in the bucket as well (uploaded once, the first time an s3 flow needs them)."""
    return Backend("s3", local_root=e2e_roots, bucket=e2e_bucket).put_tree(demo_directory[0], "antispam")


@pytest.fixture
def demo_run(request, transactional_db, demo_directory, backend):
    from dashboard import recording, scanning
    from dashboard.models import Run

    directory, result = demo_directory
    if backend.is_s3:
        directory = request.getfixturevalue("demo_uploaded")
    # Not ``result.recipe`` (the recipe's short name "antispam"): Run.recipe is a dotted path.
    run = Run.objects.create(name="antispam", directory=str(directory), recipe=DEMO_RECIPE)
    scanning.scan(run, full=True)
    recording.record_metrics(run, {c.prefix: c.metrics for c in result.checkpoints})
    return run


@pytest.fixture
def make_run(transactional_db, demo_directory, backend):
    """``make_run(name, copy_demo=...)``: a run of the test's own, in a new location of the backend.

    For flows that delete or add checkpoints: the session's demo run stays untouched.
    ``copy_demo=True`` copies it (locally with mtimes, so saved times and ages are the demo's; in
    the bucket the state file's timestamps give them), then scans and records the training metrics;
    otherwise the location starts empty.
    """
    from dashboard import recording, scanning
    from dashboard.models import Run

    def make(name: str, *, copy_demo: bool = False) -> Run:
        if copy_demo:
            directory = backend.put_tree(demo_directory[0], name)
        else:
            directory = backend.make_empty(name)
        run = Run.objects.create(name=name, directory=directory, recipe=DEMO_RECIPE)
        if copy_demo:
            scanning.scan(run, full=True)
            recording.record_metrics(run, {c.prefix: c.metrics for c in demo_directory[1].checkpoints})
        return run

    return make


def clean_screenshots() -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
