"""Writing checkpoints as jobs: training a registered recipe, and re-saving a subset of a checkpoint.

A retried save continues from the newest checkpoint an earlier attempt wrote; a retried re-save
records a copy an earlier attempt finished, or clears the partial files it left.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from django.conf import settings

from dashboard import bucket_saving, recording, scanning, staging
from dashboard.bucket_saving import BucketRun
from dashboard.models import Checkpoint, Job, Run
from dashboard.roots import checkpoint_directory, on_object_storage
from persistence import storage, uploads

from .context import JobContext


def _saved_by_attempts(job: Job) -> list[dict]:
    """Checkpoints earlier attempts of this job (the ``retry_of`` chain) recorded, oldest first."""
    saved, seen, current = [], set(), job.retry_of
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        saved.extend((current.result or {}).get("saved", []))
        current = current.retry_of
    return saved


def _resume_point(job: Job, run: Run, exists: Callable[[Checkpoint], bool]) -> Checkpoint | None:
    """The newest checkpoint an earlier attempt of this save wrote that is still whole where it was written.

    A retried save continues from there instead of starting over (and instead of being refused
    because its first checkpoints already exist).
    """
    prefixes = [s["prefix"] for s in _saved_by_attempts(job)]
    if not prefixes:
        return None
    rows = run.checkpoints.on_disk().filter(prefix__in=prefixes).exclude(status=Checkpoint.CORRUPT)
    for row in rows.order_by("-step"):
        if row.step is not None and exists(row):
            return row
    return None


def _metric_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, int | float))


def _check_source_files(checkpoint: Checkpoint) -> None:
    from persistence.training import TrainingError

    try:
        checkpoint.check_files_at_use()
    except ValueError as exc:  # files.UnsafeFile
        raise TrainingError(f"cannot read {checkpoint.prefix}: {exc}") from None


def save_job(job: Job, ctx: JobContext) -> dict:
    """Train a registered recipe and record every checkpoint the moment the Saver writes it.

    For a run in a bucket the Saver writes into a local working directory and every checkpoint is
    uploaded and recorded as it is written (``bucket_saving``); nothing in the bucket is deleted.
    """
    params = job.params
    run = Run.objects.get(pk=job.run_id)
    recipe_path = params.get("recipe", "")
    if recipe_path not in settings.CHECKPOINT_RECIPES:
        from persistence.training import TrainingError

        raise TrainingError(f"recipe {recipe_path!r} is not registered in CHECKPOINT_RECIPES")
    bucket = BucketRun(run) if run.in_bucket else None
    with contextlib.ExitStack() as stack:
        if bucket is None:
            directory = str(checkpoint_directory(run.directory, action="Saving checkpoints"))
            working = directory
        else:
            directory, working = bucket.url, stack.enter_context(bucket_saving.working_directory(job.pk))
        return _train_and_record(job, ctx, run, stack, directory, working, bucket)


def _train_and_record(job: Job, ctx: JobContext, run: Run, stack: contextlib.ExitStack, directory: str,
                      working: str, bucket: BucketRun | None) -> dict:
    from dashboard import saving
    from persistence.recipes import load_recipe
    from persistence.training import SaverOptions, TrainingCancelled, TrainingError, train

    params = job.params
    recipe_path = params["recipe"]
    options = SaverOptions.from_dict(params.get("options") or {})
    recipe = load_recipe(recipe_path)

    if job.retry_of_id:
        # Rows first agree with the disk: an earlier attempt killed inside Saver.save may have
        # left rows of checkpoints the Saver had already deleted.
        scanning.scan(run)
    in_bucket = bucket.existing_prefixes() if bucket is not None else set()

    def readable_path(checkpoint: Checkpoint) -> str:
        # What TensorFlow restores from: the file itself, or its copy staged from the bucket.
        if bucket is None:
            _check_source_files(checkpoint)
            return checkpoint.path
        try:
            return stack.enter_context(staging.readable(checkpoint, action="Saving checkpoints", with_meta=False)).path
        except ValueError as exc:
            raise TrainingError(str(exc)) from None

    restore_from = None
    if params.get("restore_from"):
        source = run.checkpoints.on_disk().filter(pk=params["restore_from"]).first()
        if source is None:
            raise TrainingError(
                f"the checkpoint to continue from ({params.get('restore_from_prefix') or params['restore_from']}) "
                "is no longer on disk"
            )
        restore_from = readable_path(source)
    first_step = int(params.get("start_step") or 0)
    target_step = int(params.get("target_step") or first_step + int(params["steps"]))
    total = max(1, target_step - first_step)

    def exists(row: Checkpoint) -> bool:
        return row.prefix in in_bucket if bucket is not None else os.path.exists(row.path + ".index")

    resume = _resume_point(job, run, exists) if job.retry_of_id else None
    if resume is not None:
        restore_from = readable_path(resume)
        ctx.log(f"Continuing from {resume.prefix}, written by an earlier attempt")
    done_before = (resume.step - first_step) if resume is not None else 0
    steps = total - done_before
    saved_rows: list[dict] = list(_saved_by_attempts(job)) if resume is not None else []
    if steps <= 0:
        ctx.log("Nothing left to do: an earlier attempt reached the last step")
        return {"saved": [], "final_step": resume.step, "target_step": target_step, "resumed_from": resume.prefix}

    own_saved: list[dict] = []
    pruned: list[str] = []
    rotated_locally: list[str] = []
    kept_from_rotation: dict[str, str] = {}
    # max_to_keep may only rotate out what this job (or an earlier attempt of it) wrote, and
    # never a checkpoint a protection rule keeps; the guard reads `written` at every question.
    # In a bucket run the Saver only ever rotates the working directory, which holds nothing else.
    written = {s["prefix"] for s in _saved_by_attempts(job)}
    guard = saving.rotation_guard(run, own=written, state_file=options.state_file) if bucket is None else None

    def on_saved(saved) -> None:
        if bucket is not None:
            checkpoint, merged = bucket.publish(saved, working, actor=job.requested_by)
        else:
            note = (
                f"Deleted by TensorFlow's Saver (max_to_keep={options.max_to_keep}) when save job "
                f"#{job.pk} wrote {saved.prefix}."
            )
            checkpoint, merged = recording.record_saved(run, saved, pruned_note=note, actor=job.requested_by), None
        written.add(saved.prefix)
        entry = {"prefix": saved.prefix, "step": saved.step, "id": checkpoint.pk, **saved.metrics}
        own_saved.append(entry)
        line = f"Saved {saved.prefix} ({_metric_text(saved.metrics)})"
        if merged is not None:
            line += f"; uploaded to {directory}"
            if merged.attempts > 1:
                line += f" (the state file changed meanwhile: merged again, attempt {merged.attempts})"
            rotated_locally.extend(saved.deleted)
            if saved.deleted:
                line += (f"; max_to_keep rotated {', '.join(saved.deleted)} out of the local working directory "
                         "only: it stays in the bucket until a prune removes it")
        elif saved.deleted:
            pruned.extend(saved.deleted)
            line += f"; the Saver's max_to_keep deleted {', '.join(saved.deleted)}"
        if saved.kept_from_rotation and merged is None:
            kept_from_rotation.update(saved.kept_from_rotation)
            kept = "; ".join(f"{p} ({why})" for p, why in saved.kept_from_rotation.items())
            line += f"; kept out of max_to_keep's rotation: {kept}"
        # What a retry continues from: stored the moment the row exists.
        ctx.log(line, saved=own_saved, target_step=target_step, kept_from_rotation=kept_from_rotation)

    def on_progress(done: int, of: int, loss: float) -> None:
        overall = done_before + done
        ctx.progress(100 * overall / total, f"Step {overall}/{total} · loss {loss:.4f}")

    try:
        result = train(
            working,
            recipe,
            steps=steps,
            save_every=int(params["save_every"]),
            options=options,
            restore_from=restore_from,
            seed=int(params.get("seed") or 0),
            on_saved=on_saved,
            on_progress=on_progress,
            should_stop=ctx.should_stop,
            # A retry rewrites what a killed attempt may have left after its last recorded save.
            overwrite=job.retry_of_id is not None,
            rotation_guard=guard,
            existing_prefixes=in_bucket,
        )
    except TrainingCancelled as exc:
        ctx.log(f"Stopped at step {exc.step} on request")
        return {
            "canceled": True, "saved": own_saved, "stopped_at_step": exc.step, "target_step": target_step,
            "pruned_by_saver": pruned, "kept_from_rotation": kept_from_rotation,
        }
    except TrainingError as exc:
        if working == directory:
            raise
        raise TrainingError(str(exc).replace(working, directory)) from None
    last = own_saved[-1] if own_saved else None
    loss = result.final_metrics.get("loss", float("nan"))
    ctx.progress(100, f"Step {total}/{total} · loss {loss:.4f}", force=True)
    outcome = {
        "directory": directory,
        "recipe": recipe_path,
        "start_step": result.start_step,
        "final_step": result.final_step,
        "target_step": target_step,
        "steps_run": result.steps_run,
        "saved": own_saved,
        "all_attempts_saved": [s["prefix"] for s in saved_rows] + [s["prefix"] for s in own_saved],
        "latest": last["prefix"] if last else None,
        "pruned_by_saver": pruned,
        "kept_from_rotation": kept_from_rotation,
        "initial_metrics": result.initial_metrics,
        "final_metrics": result.final_metrics,
        "restored_from": os.path.basename(result.restored_from) if result.restored_from else None,
        "resumed_from": resume.prefix if resume is not None else None,
        "initialized_variables": result.initialized_variables if restore_from else [],
        "elapsed_seconds": round(result.elapsed_seconds, 3),
    }
    if bucket is not None:
        outcome["rotated_in_working_directory"] = rotated_locally
    return outcome


def resave_job(job: Job, ctx: JobContext) -> dict:
    """Write a subset of a checkpoint's variables (optionally renamed) under a new prefix."""
    from persistence.training import TrainingError, checkpoint_files, resave_subset

    params = job.params
    run = Run.objects.get(pk=job.run_id)
    source = Checkpoint.objects.filter(pk=job.checkpoint_id, run=run).first()
    if source is None or source.status in Checkpoint.GONE:
        raise TrainingError("the source checkpoint is no longer on disk")
    if on_object_storage(run.directory):
        return _resave_into_bucket(job, ctx, run, source)
    directory = str(checkpoint_directory(run.directory, action="Saving checkpoints"))
    _check_source_files(source)
    new_prefix = params["new_prefix"]

    existing = checkpoint_files(directory, new_prefix)
    if existing and job.retry_of_id is not None:
        # Files an earlier attempt of this job left. resave_subset moves the .index in last, so
        # with an .index the copy is whole and only its row is missing; without one it is debris.
        if new_prefix + ".index" in existing:
            from persistence.training import SavedCheckpoint, step_from_prefix

            written = SavedCheckpoint(
                prefix=new_prefix, path=os.path.join(directory, new_prefix), step=step_from_prefix(new_prefix),
                metrics={}, files=existing,
            )
            checkpoint = recording.record_saved(run, written, source=source, actor=job.requested_by)
            ctx.log(f"{new_prefix} was already written by an earlier attempt; recorded it")
            return _resave_result(checkpoint, source)
        # A re-save writes data shards and then the .index, never a .meta: only shards can be an
        # earlier attempt's debris. Anything else under the prefix is someone else's (a .meta kept
        # for later checkpoints) and must survive the retry.
        debris = [name for name in existing if ".data-" in name]
        foreign = sorted(set(existing) - set(debris))
        if foreign:
            raise TrainingError(
                f"{new_prefix} now has files this job did not write ({', '.join(foreign)}); choose another prefix"
            )
        for name in debris:
            os.remove(os.path.join(directory, name))
        ctx.log(f"Removed {len(debris)} partial file(s) an earlier attempt left")

    ctx.progress(10, f"Reading {source.prefix}", force=True)
    saved = resave_subset(
        source.path,
        directory,
        new_prefix,
        variables=params.get("variables"),
        drop_optimizer_slots=bool(params.get("drop_optimizer_slots")),
        rename=params.get("rename") or None,
    )
    checkpoint = recording.record_saved(run, saved, source=source, actor=job.requested_by)
    ctx.log(f"Wrote {new_prefix}: {len(saved.variables)} variables, {saved.size_bytes} bytes")
    ctx.progress(100, f"Wrote {new_prefix}", force=True)
    return _resave_result(checkpoint, source)


def _resave_into_bucket(job: Job, ctx: JobContext, run: Run, source: Checkpoint) -> dict:
    """A re-save of a checkpoint in a bucket: staged, re-saved in a local working directory,
    uploaded (data shards first, the ``.index`` last) and recorded; the state object is left
    alone, as a local re-save leaves the state files."""
    from persistence.training import SavedCheckpoint, TrainingError, resave_subset, step_from_prefix

    params = job.params
    new_prefix = params["new_prefix"]
    bucket = BucketRun(run)
    try:
        present = [e.name for e in storage.storage_for(bucket.url).list(bucket.url)
                   if e.name.startswith(new_prefix + ".")]
    except storage.StorageError as exc:
        raise TrainingError(f"cannot list {bucket.url}: {exc}") from None
    if new_prefix + ".index" in present:
        if job.retry_of_id is None:
            raise TrainingError(f"{new_prefix} already exists in {bucket.url}; choose another prefix")
        # Uploaded whole by an earlier attempt (the .index goes last): only its row is missing.
        written = SavedCheckpoint(prefix=new_prefix, path=bucket.path(new_prefix), step=step_from_prefix(new_prefix),
                                  metrics={}, files=present)
        checkpoint = bucket.record(written, actor=job.requested_by, source=source)
        ctx.log(f"{new_prefix} was already uploaded by an earlier attempt; recorded it")
        return _resave_result(checkpoint, source)
    # Data shards without an .index are an earlier attempt's debris, replaced by this upload;
    # anything else under the prefix (a .meta kept for later checkpoints) is someone else's.
    foreign = sorted(name for name in present if ".data-" not in name or job.retry_of_id is None)
    if foreign:
        raise TrainingError(f"{new_prefix} already has objects in {bucket.url} ({', '.join(foreign)}); "
                            "choose another prefix")
    ctx.progress(10, f"Staging {source.prefix}", force=True)
    try:
        with staging.readable(source, action="Re-saving a subset of a checkpoint", with_meta=False) as files, \
                bucket_saving.working_directory(job.pk) as working:
            ctx.progress(30, f"Reading {source.prefix}", force=True)
            saved = resave_subset(
                files.path, working, new_prefix,
                variables=params.get("variables"),
                drop_optimizer_slots=bool(params.get("drop_optimizer_slots")),
                rename=params.get("rename") or None,
            )
            ctx.progress(70, f"Uploading {new_prefix}", force=True)
            checkpoint, _ = bucket.publish(saved, working, actor=job.requested_by, source=source, merge_state=False)
    except uploads.UploadError as exc:
        raise TrainingError(str(exc)) from None
    except ValueError as exc:  # staging: the bucket moved or a file could not be fetched
        raise TrainingError(str(exc)) from None
    ctx.log(f"Wrote {new_prefix} into {bucket.url}: {len(saved.variables)} variables, {saved.size_bytes} bytes")
    ctx.progress(100, f"Wrote {new_prefix}", force=True)
    return _resave_result(checkpoint, source)


def _resave_result(checkpoint: Checkpoint, source: Checkpoint) -> dict:
    return {
        "checkpoint": checkpoint.prefix,
        "checkpoint_id": checkpoint.pk,
        "source": source.prefix,
        "variables": [v["name"] for v in checkpoint.variables],
        "size_bytes": checkpoint.size_bytes,
        "source_size_bytes": source.size_bytes,
    }
