"""Recipes for job tests only, registered through ``CHECKPOINT_RECIPES`` in the test and its worker.

They import TensorFlow only inside ``build_graph`` (as real recipes must), so the web side of a
test can list them in the save form without importing it.
"""

from __future__ import annotations

import os
import time

import numpy as np

from persistence.recipes.antispam import AntiSpamRecipe

SLOW = "tests.dashboard.job_recipes.SlowAntiSpamRecipe"
FAILING = "tests.dashboard.job_recipes.FailingRecipe"
FLAKY = "tests.dashboard.job_recipes.FlakyRecipe"
BUILT_IN = "persistence.recipes.antispam.AntiSpamRecipe"
ALL = [BUILT_IN, SLOW, FAILING, FLAKY]
# Give this to a worker's environment (and the test's settings) so it accepts these recipes.
RECIPES_ENV = {"CHECKPOINT_RECIPES": ",".join(ALL)}
# Where FlakyRecipe looks for its "fail this time" marker: set in the worker's environment.
FLAKY_MARKER_ENV = "FLAKY_RECIPE_MARKER"


class SlowAntiSpamRecipe(AntiSpamRecipe):
    """The built-in model, with a pause in every training step so that a job lasts long enough
    to be watched, canceled, timed out or killed half way (the real one does 300 steps in 1 s)."""

    name = "antispam-slow"
    description = "Anti-spam classifier that sleeps in every step (tests only)."
    step_delay = float(os.environ.get("SLOW_RECIPE_STEP_DELAY", "0.01"))

    def build_graph(self):
        import tensorflow as tf

        handles = super().build_graph()
        delay = self.step_delay

        def pause() -> np.int32:
            time.sleep(delay)
            return np.int32(0)

        paused = tf.py_function(pause, [], tf.int32, name="test_pause")
        handles.train_op = tf.group(handles.train_op, paused, name="train_and_pause")
        return handles


class FailingRecipe(AntiSpamRecipe):
    name = "failing"
    description = "Raises while building its graph (tests only)."

    def build_graph(self):
        raise RuntimeError("this recipe fails on purpose while building its graph")


class FlakyRecipe(AntiSpamRecipe):
    """Fails while the marker file named by ``$FLAKY_RECIPE_MARKER`` exists, removing it: the
    first attempt fails, a retry succeeds."""

    name = "flaky"
    description = "Fails once, then trains (tests only)."

    def build_graph(self):
        marker = os.environ.get(FLAKY_MARKER_ENV)
        if marker and os.path.exists(marker):
            os.remove(marker)
            raise RuntimeError("flaky recipe: failing this once")
        return super().build_graph()


STATE_REWRITING = "tests.dashboard.job_recipes.StateRewritingRecipe"
# Where StateRewritingRecipe writes, after how many training steps, and what it adds.
STATE_REWRITE_ENV = ("STATE_REWRITE_URL", "STATE_REWRITE_AT", "STATE_REWRITE_PREFIX")


class StateRewritingRecipe(AntiSpamRecipe):
    """A second trainer writing the same run while a save job runs, at a moment the test chooses.

    After ``$STATE_REWRITE_AT`` training steps it saves "its" checkpoint the way a trainer does: it
    reads the state object at ``$STATE_REWRITE_URL`` and writes it back naming
    ``$STATE_REWRITE_PREFIX`` as latest, appended to what was listed.
    """

    name = "state-rewriting"
    description = "Rewrites the run's state object during training (tests only)."

    def build_graph(self):
        import tensorflow as tf

        handles = super().build_graph()
        url, at, prefix = (os.environ.get(name, "") for name in STATE_REWRITE_ENV)
        calls = [0]

        def rewrite() -> np.int32:
            calls[0] += 1
            if url and calls[0] == int(at):
                from persistence import statefile, storage

                store = storage.storage_for(url)
                directory = url.rsplit("/", 1)[0]
                state = statefile.parse_state_bytes(store.read_bytes(url), "checkpoint", directory)
                text = statefile.format_state_text(latest=prefix, all_prefixes=[*state.all_prefixes, prefix])
                store.put_bytes(url, text.encode("utf-8"))
            return np.int32(0)

        written = tf.py_function(rewrite, [], tf.int32, name="another_trainer_saves")
        handles.train_op = tf.group(handles.train_op, written, name="train_and_other_trainer")
        return handles


FAILING_MIDWAY = "tests.dashboard.job_recipes.FailingMidwayRecipe"
# The marker file that makes FailingMidwayRecipe fail (once), and after how many training steps.
MIDWAY_ENV = ("MIDWAY_FAIL_MARKER", "MIDWAY_FAIL_AT")


class FailingMidwayRecipe(AntiSpamRecipe):
    """Fails once, in the middle of training (after ``$MIDWAY_FAIL_AT`` steps, while the marker file
    ``$MIDWAY_FAIL_MARKER`` exists, which it removes): what a retry continues from is what the
    failed attempt saved before that step."""

    name = "failing-midway"
    description = "Fails once during training (tests only)."

    def build_graph(self):
        import tensorflow as tf

        handles = super().build_graph()
        marker, at = (os.environ.get(name, "") for name in MIDWAY_ENV)
        calls = [0]

        def maybe_fail() -> np.int32:
            calls[0] += 1
            if marker and calls[0] == int(at) and os.path.exists(marker):
                os.remove(marker)
                raise RuntimeError("failing midway on purpose")
            return np.int32(0)

        checked = tf.py_function(maybe_fail, [], tf.int32, name="fail_midway")
        handles.train_op = tf.group(handles.train_op, checked, name="train_or_fail")
        return handles


def wait_for_job(job, statuses, timeout: float = 60.0):
    """Poll the row until its status is one of ``statuses``; return the fresh row."""
    from tests.live import wait_for

    wanted = {statuses} if isinstance(statuses, str) else set(statuses)

    def reached():
        job.refresh_from_db()
        return job.status in wanted

    try:
        wait_for(reached, timeout, interval=0.1, what=f"job #{job.pk} to become {'/'.join(sorted(wanted))}")
    except TimeoutError:
        raise AssertionError(f"job #{job.pk} is {job.status} ({job.message!r}, error {job.error!r})") from None
    return job


def rq_status(job) -> str | None:
    """RQ's own status for the job, or None when RQ has no record of it."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job as RQJob

    from dashboard import jobs

    try:
        return RQJob.fetch(job.rq_job_id, connection=jobs.redis_connection()).get_status().value
    except NoSuchJobError:
        return None


def save_params(recipe: str = SLOW, *, steps: int = 20, save_every: int = 10, **options) -> dict:
    """Job params as the save form builds them (for tests that start jobs directly)."""
    from persistence.training import SaverOptions

    opts = {"max_to_keep": None, **options}
    return {
        "recipe": recipe, "steps": steps, "save_every": save_every, "options": SaverOptions(**opts).to_dict(),
        "restore_from": None, "start_step": 0, "target_step": steps,
    }


def start_worker(root, log_path, *, burst: bool = False, **env):
    """A real worker process accepting the test recipes and writing under ``root``."""
    from tests.live import LiveWorker

    return LiveWorker(
        burst=burst, log_path=log_path, CHECKPOINT_ROOTS=str(root), **RECIPES_ENV,
        **{FLAKY_MARKER_ENV: str(root / "flaky.marker")}, **env,
    ).start()


def ensure_roles() -> None:
    """Recreate the role groups: transactional tests flush what the data migration created.

    Permissions themselves come back after a flush (Django re-runs ``post_migrate``); the groups
    are rebuilt here from the migration's table, without running the migration function (it
    toggles ``models_module`` on the app configs it is given: fine for migration state, not for
    the live app registry).
    """
    import importlib

    from django.contrib.auth.models import Group, Permission

    roles = importlib.import_module("dashboard.migrations.0002_roles").ROLE_PERMISSIONS
    for role, codenames in roles.items():
        group, created = Group.objects.get_or_create(name=role)
        if created:
            group.permissions.set(
                Permission.objects.filter(content_type__app_label="dashboard", codename__in=codenames)
            )
