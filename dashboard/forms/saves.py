"""Save jobs (train a recipe) and re-save jobs (a subset of a checkpoint's variables)."""

from __future__ import annotations

from django import forms

from ..models import Checkpoint, Run
from .names import (
    KNOWN_NAMES_FROM_CHECKPOINTS,
    MAX_TO_KEEP_LIMIT,
    RESTORE_CHOICES_SHOWN,
    _parse_names,
    _parse_rename,
    _unknown,
    file_prefix_problem,
)


def recipe_choices() -> list[tuple[str, str]]:
    from django.conf import settings

    from persistence.recipes import RecipeError, load_recipe

    choices = []
    for dotted in settings.CHECKPOINT_RECIPES:
        try:
            recipe = load_recipe(dotted)
            label = f"{recipe.name or dotted} — {recipe.description}" if recipe.description else recipe.name or dotted
        except RecipeError:
            label = dotted
        choices.append((dotted, label))
    return choices


class SaveJobForm(forms.Form):
    """Start a save job: train a recipe for N steps, saving every K with the Saver's options."""

    ALL, NAMES, RENAME = "all", "names", "rename"

    recipe = forms.ChoiceField(help_text="Model recipes registered in CHECKPOINT_RECIPES.")
    steps = forms.IntegerField(min_value=1, max_value=100_000_000, initial=300, help_text="Training steps to run.")
    save_every = forms.IntegerField(
        label="Save every K steps", min_value=1, initial=25,
        help_text="A checkpoint whenever the global step is a multiple of K, and after the last step.",
    )
    restore_from = forms.TypedChoiceField(
        label="Continue from", required=False, coerce=int, empty_value=None,
        help_text="Restore this checkpoint first; the global step goes on from it.",
    )
    prefix = forms.CharField(
        initial="model.ckpt", max_length=200,
        help_text="File prefix: checkpoints are written as PREFIX-STEP.index, .data-…, .meta.",
    )
    max_to_keep = forms.IntegerField(
        min_value=0, max_value=MAX_TO_KEEP_LIMIT, initial=5, required=False,
        help_text="The Saver deletes this job's older checkpoints beyond this many. 0 or empty keeps all.",
    )
    keep_checkpoint_every_n_hours = forms.FloatField(
        label="Keep one every N hours", initial=10000.0, min_value=0.0001, required=False,
        help_text="Checkpoints the Saver keeps beyond max_to_keep, one per this many hours.",
    )
    write_meta_graph = forms.ChoiceField(
        label="Write the meta graph",
        choices=[("always", "With every save"), ("first", "With the first save only (write_meta_graph=False after)")],
        initial="always",
    )
    var_list_mode = forms.ChoiceField(
        label="Variables to save",
        choices=[(ALL, "All variables"), (NAMES, "Only these variables"), (RENAME, "Renamed (new_name=variable_name)")],
        initial=ALL, widget=forms.RadioSelect,
    )
    var_names = forms.CharField(
        label="Variable names", required=False, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line, e.g. hidden/kernel.",
    )
    rename_map = forms.CharField(
        label="Rename map", required=False, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One new_name=variable_name per line: the Saver's var_list dict. Only these are saved.",
    )

    def __init__(self, *args, run: Run, **kwargs):
        super().__init__(*args, **kwargs)
        self.run = run
        self.fields["recipe"].choices = recipe_choices()
        if run.recipe in dict(self.fields["recipe"].choices):
            self.fields["recipe"].initial = run.recipe
        newest = run.checkpoints.on_disk().exclude(step=None).order_by("-step")[:RESTORE_CHOICES_SHOWN]
        newest = list(newest.only("id", "prefix", "step", "latest_in"))
        self.fields["restore_from"].choices = [("", "Nothing: start from fresh weights")] + [
            (c.pk, f"{c.prefix} (step {c.step}){' — latest' if c.latest_in else ''}") for c in newest
        ]
        self.restore_checkpoint = None
        # Training on from where the run stands is what a second save on a run almost always
        # means (and starting again at step 0 would collide with its existing prefixes).
        self.default_restore = next((c for c in newest if c.latest_in), newest[0] if newest else None)
        if self.default_restore is not None:
            self.fields["restore_from"].initial = self.default_restore.pk

    def known_variable_names(self, recipe_path: str) -> set[str]:
        """Names the form can vouch for without TensorFlow; empty means "cannot tell"."""
        from persistence.recipes import RecipeError, load_recipe

        known: set[str] = set()
        try:
            known.update(getattr(load_recipe(recipe_path), "variable_names", None) or [])
        except RecipeError:
            pass
        rows = self.run.checkpoints.on_disk().filter(source=None).order_by("-step")
        for variables in rows.values_list("variables", flat=True)[:KNOWN_NAMES_FROM_CHECKPOINTS]:
            known.update(v["name"] for v in variables or [])
        return known

    def clean_prefix(self) -> str:
        from persistence.training import SaverOptions, TrainingError

        prefix = self.cleaned_data["prefix"].strip()
        if problem := file_prefix_problem(prefix):
            raise forms.ValidationError(problem)
        try:
            SaverOptions(prefix=prefix)
        except TrainingError:
            raise forms.ValidationError("Enter a plain file name, without directories.") from None
        return prefix

    def clean_restore_from(self):
        pk = self.cleaned_data.get("restore_from")
        if pk is not None:
            self.restore_checkpoint = self.run.checkpoints.on_disk().filter(pk=pk).first()
            if self.restore_checkpoint is None:
                raise forms.ValidationError("That checkpoint is no longer on disk.")
        return pk

    def clean(self):
        cleaned = super().clean()
        mode = cleaned.get("var_list_mode")
        known = self.known_variable_names(cleaned.get("recipe") or "") if cleaned.get("recipe") else set()
        var_list = None
        if mode == self.NAMES:
            var_list = _parse_names(cleaned.get("var_names") or "")
            if not var_list:
                self.add_error("var_names", "Enter the names of the variables to save.")
            elif known and (problem := _unknown(var_list, known)):
                self.add_error("var_names", problem)
        elif mode == self.RENAME:
            var_list, errors = _parse_rename(cleaned.get("rename_map") or "")
            for error in errors:
                self.add_error("rename_map", error)
            if not errors and known and (problem := _unknown(var_list.values(), known)):
                self.add_error("rename_map", problem)
        cleaned["var_list"] = var_list
        self._check_overwrite(cleaned)
        return cleaned

    def _check_overwrite(self, cleaned: dict) -> None:
        # The job refuses to write over a checkpoint the dashboard recorded; say so here first.
        prefix, steps, every = cleaned.get("prefix"), cleaned.get("steps"), cleaned.get("save_every")
        if not (prefix and steps and every):
            return
        start = self.restore_checkpoint.step if self.restore_checkpoint is not None else 0
        end = start + steps
        clashes = [
            p for p, step in self.run.checkpoints.on_disk()
            .filter(step__gt=start, step__lte=end, prefix__startswith=f"{prefix}-")
            .order_by("step").values_list("prefix", "step")
            if p == f"{prefix}-{step}" and (step % every == 0 or step == end)
        ]
        if clashes:
            shown = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
            self.add_error(
                "prefix",
                f"This run already holds {shown}. Continue from its latest checkpoint, or choose another prefix.",
            )

    def rotation_preview(self):
        """What ``max_to_keep`` will remove, from the values entered so far (initial ones otherwise)."""
        from dashboard import saving

        values = {name: self.fields[name].initial for name in ("prefix", "steps", "save_every", "max_to_keep",
                                                               "write_meta_graph")}
        restore = self.default_restore
        if self.is_bound:
            self.is_valid()
            for name in values:
                if name in self.cleaned_data and name not in self.errors:
                    values[name] = self.cleaned_data[name]
            restore = self.restore_checkpoint
        return saving.preview(
            self.run, prefix=values["prefix"], start_step=restore.step if restore is not None else 0,
            steps=values["steps"], save_every=values["save_every"], max_to_keep=values["max_to_keep"],
            write_meta_graph=values["write_meta_graph"],
        )

    def job_params(self) -> dict:
        from persistence.training import SaverOptions

        data = self.cleaned_data
        options = SaverOptions(
            prefix=data["prefix"],
            max_to_keep=data["max_to_keep"] or None,
            keep_checkpoint_every_n_hours=data["keep_checkpoint_every_n_hours"] or 10000.0,
            write_meta_graph=data["write_meta_graph"],
            var_list=data["var_list"],
        )
        start = self.restore_checkpoint.step if self.restore_checkpoint is not None else 0
        return {
            "recipe": data["recipe"],
            "steps": data["steps"],
            "save_every": data["save_every"],
            "options": options.to_dict(),
            "restore_from": self.restore_checkpoint.pk if self.restore_checkpoint is not None else None,
            "restore_from_prefix": self.restore_checkpoint.prefix if self.restore_checkpoint is not None else None,
            "start_step": start,
            "target_step": start + data["steps"],
        }


class ResaveForm(forms.Form):
    """Re-save a subset of a checkpoint's variables under a new prefix, without training."""

    DROP_SLOTS, CHOOSE = "drop_slots", "choose"

    mode = forms.ChoiceField(
        label="Keep",
        choices=[
            (DROP_SLOTS, "Everything but the optimizer's slots (Adam's moments: a slim checkpoint for serving)"),
            (CHOOSE, "Only the variables ticked below"),
        ],
        initial=DROP_SLOTS, widget=forms.RadioSelect,
    )
    variables = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)
    rename_map = forms.CharField(
        label="Rename map", required=False, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Optional, one new_name=variable_name per line: for transfer learning into another graph.",
    )
    new_prefix = forms.CharField(max_length=200, help_text="Written next to the original, in the run directory.")

    def __init__(self, *args, checkpoint, **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoint = checkpoint
        self.names = [v["name"] for v in checkpoint.variables or []]
        self.fields["variables"].choices = [(n, n) for n in self.names]
        self.fields["new_prefix"].initial = checkpoint.slim_prefix

    def clean_new_prefix(self) -> str:
        from persistence.training import checkpoint_files

        prefix = self.cleaned_data["new_prefix"].strip()
        if problem := file_prefix_problem(prefix):
            raise forms.ValidationError(problem)
        run = self.checkpoint.run
        if run.checkpoints.filter(prefix=prefix).exclude(status__in=Checkpoint.GONE).exists() or (
            checkpoint_files(run.directory, prefix)
        ):
            raise forms.ValidationError(f"{prefix} already exists in this run; choose another prefix.")
        return prefix

    def clean(self):
        cleaned = super().clean()
        chosen = cleaned.get("variables") or []
        if cleaned.get("mode") == self.CHOOSE and not chosen:
            self.add_error("variables", "Tick at least one variable to keep.")
        rename = {}
        if (cleaned.get("rename_map") or "").strip():
            mapping, errors = _parse_rename(cleaned["rename_map"])
            for error in errors:
                self.add_error("rename_map", error)
            allowed = set(chosen) if cleaned.get("mode") == self.CHOOSE else set(self.names)
            if not errors and (problem := _unknown(mapping.values(), allowed)):
                self.add_error("rename_map", problem)
            rename = {old: new for new, old in mapping.items()}
            if len(set(rename)) != len(mapping):
                self.add_error("rename_map", "A variable is renamed twice.")
        cleaned["rename"] = rename
        return cleaned

    def job_params(self) -> dict:
        from dashboard.jobs import RESAVE_MODE

        data = self.cleaned_data
        choose = data["mode"] == self.CHOOSE
        return {
            "mode": RESAVE_MODE,
            "source": self.checkpoint.prefix,
            "new_prefix": data["new_prefix"],
            "variables": list(data["variables"]) if choose else None,
            "drop_optimizer_slots": not choose,
            "rename": data["rename"],
        }


