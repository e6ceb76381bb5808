from __future__ import annotations

import os

from django import forms
from django.utils.text import slugify

from persistence.graphoutline import GraphOutline, OutlineTooLarge

from . import retention
from .models import Run


class RegisterRunForm(forms.ModelForm):
    """Register a checkpoint directory as a run. The model's ``clean`` checks the directory."""

    class Meta:
        model = Run
        fields = ["name", "directory"]
        help_texts = {
            "name": "Letters, digits, hyphens and underscores; used in URLs.",
            "directory": "Absolute path of the directory your training writes checkpoints to.",
        }
        widgets = {"directory": forms.TextInput(attrs={"placeholder": "/data/checkpoints/antispam"})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["name"].required = False
        self.fields["name"].help_text += " Defaults to the directory's name."

    def clean_name(self) -> str:
        return self.cleaned_data.get("name", "").strip()

    def clean(self):
        cleaned = super().clean()
        directory = cleaned.get("directory") or ""
        if not cleaned.get("name") and directory:
            cleaned["name"] = slugify(directory.rstrip("/").rsplit("/", 1)[-1])[:100]
            if not cleaned["name"]:
                self.add_error("name", "Choose a name for this run.")
        return cleaned


# --- save and re-save jobs --------------------------------------------------------------------
# The web process never imports TensorFlow: variable names are checked against what the run's
# checkpoint rows recorded (and a recipe's declared ``variable_names``); the job checks again
# against the real graph or file and fails with the list of valid names.

RESTORE_CHOICES_SHOWN = 50
KNOWN_NAMES_FROM_CHECKPOINTS = 5
# Far beyond any real Saver setting, and small enough that the number stays a plain int everywhere
# it goes (job params, the Saver, the database).
MAX_TO_KEEP_LIMIT = 10**6
# Node and variable names typed into the freeze form: each one unknown to the graph is fuzzy-matched
# against every node name, in the web process, so how many and how long they may be is bounded.
MAX_TYPED_NAMES = 64
MAX_TYPED_NAME_LENGTH = 256
# Fuzzy matches ("closest: ...") are looked up for this many unknown names; the rest are counted.
FUZZY_MATCHED_NAMES = 5


def file_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a checkpoint file prefix in the run directory, or None.

    Separators of any platform are refused, not only this one's: a ``\\`` is a directory on a
    Windows share of the same storage and reads as a path to every person looking at it.
    """
    if not prefix or prefix in (".", "..") or prefix.startswith("."):
        return "Enter a plain file name that does not start with a dot."
    if any(sep in prefix for sep in ("/", "\\")) or any(ord(ch) < 32 or ord(ch) == 127 for ch in prefix):
        return "Enter a plain file name, without directories (/ or \\) or control characters."
    if prefix == "checkpoint":
        return "“checkpoint” is the state file's name; choose another prefix."
    return None


def _parse_names(text: str) -> list[str]:
    """Variable names, one per line or separated by commas; ``:0`` tensor suffixes dropped."""
    names = []
    for part in text.replace(",", "\n").splitlines():
        name = part.strip()
        if name.endswith(":0"):
            name = name[:-2]
        if name and name not in names:
            names.append(name)
    return names


def _parse_rename(text: str) -> tuple[dict[str, str], list[str]]:
    """``new_name=variable_name`` lines → ({new: old}, errors)."""
    mapping, errors = {}, []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        new, sep, old = (s.strip() for s in line.partition("="))
        old = old[:-2] if old.endswith(":0") else old
        if not sep or not new or not old:
            errors.append(f"Line {number} (“{line}”) is not of the form new_name=variable_name.")
        elif new in mapping:
            errors.append(f"“{new}” is given twice as a new name.")
        else:
            mapping[new] = old
    if not mapping and not errors:
        errors.append("Enter at least one new_name=variable_name line.")
    return mapping, errors


def _unknown(names, known: set[str]) -> str | None:
    unknown = [n for n in names if n not in known]
    if not unknown:
        return None
    return f"Unknown variable name{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}. Known: {', '.join(sorted(known))}."


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
        self.fields["restore_from"].choices = [("", "Nothing: start from fresh weights")] + [
            (c.pk, f"{c.prefix} (step {c.step})") for c in newest.only("id", "prefix", "step")
        ]
        self.restore_checkpoint = None

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
        restore = None
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
        if run.checkpoints.filter(prefix=prefix).exclude(status__in=["pruned", "missing"]).exists() or (
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


# --- freeze and verify ----------------------------------------------------------------------------
# The freeze form suggests output nodes and checks names against an outline of the graph, read in
# the web process without TensorFlow (persistence.graphoutline); the job checks everything again.

SUGGESTIONS_SHOWN = 12


def outline_for_checkpoint(checkpoint) -> tuple[GraphOutline | None, str]:
    """The outline of the meta graph ``checkpoint`` restores with, or None and why not.

    An empty reason with no outline means the graph is too large to outline here: names are
    then taken as typed and checked by the job.
    """
    from django.conf import settings

    from persistence.files import PathOutsideRoots, resolve_inside

    meta = checkpoint.meta_path()
    if meta is None:
        return None, (f"{checkpoint.prefix} has no meta graph, and no earlier checkpoint of this run provides "
                      "one: there is no graph structure to freeze.")
    try:
        return GraphOutline.read(str(resolve_inside(meta, settings.CHECKPOINT_ROOTS))), ""
    except PathOutsideRoots:
        return None, "The meta graph is outside the checkpoint roots."
    except OutlineTooLarge:
        return None, ""
    except FileNotFoundError:
        return None, f"The meta graph {os.path.basename(meta)} is missing on disk."
    except (OSError, ValueError) as exc:
        return None, f"The meta graph {os.path.basename(meta)} cannot be read: {exc}"


def _node(name: str) -> str:
    from persistence.graphsafety import node_name

    return node_name(name)


def _split_names(text: str) -> list[str]:
    """Names separated by commas, spaces or new lines, each once, in order."""
    return list(dict.fromkeys(part for part in text.replace(",", " ").split() if part))


def _typed_names_problem(names: list[str]) -> str | None:
    if len(names) > MAX_TYPED_NAMES:
        return f"At most {MAX_TYPED_NAMES} names, not {len(names)}."
    if any(len(n) > MAX_TYPED_NAME_LENGTH for n in names):
        return f"A name may be at most {MAX_TYPED_NAME_LENGTH} characters long."
    return None


# Enough characters for MAX_TYPED_NAMES names of the longest length and their separators; longer
# text is refused by the field before anything is split or matched.
_TYPED_NAMES_MAX_CHARS = MAX_TYPED_NAMES * (MAX_TYPED_NAME_LENGTH + 2)


class FreezeForm(forms.Form):
    """Freeze a checkpoint: output nodes (suggested), clear devices, variables allow- and deny-list."""

    outputs = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="Suggested output nodes",
        help_text="Ops whose outputs nothing consumes, without saver, initialisation and training machinery.",
    )
    other_outputs = forms.CharField(
        required=False, label="Other output nodes", max_length=_TYPED_NAMES_MAX_CHARS,
        help_text="Node names, separated by commas or spaces (e.g. scope/logits).",
    )
    clear_devices = forms.BooleanField(
        required=False, initial=True, help_text="Drop device placements (a graph trained on GPUs must run anywhere)."
    )
    variables_allowlist = forms.CharField(
        required=False, label="Only freeze these variables", max_length=_TYPED_NAMES_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 2}), help_text="Optional; variable names, separated by commas or lines.",
    )
    variables_denylist = forms.CharField(
        required=False, label="Never freeze these variables", max_length=_TYPED_NAMES_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 2}), help_text="Optional; variable names, separated by commas or lines.",
    )

    def __init__(self, *args, checkpoint, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from persistence.discovery import TF2

        self.checkpoint = checkpoint
        self.tf2 = checkpoint.format == TF2
        self.outline, self.problem = (None, "") if self.tf2 else outline_for_checkpoint(checkpoint)
        if self.tf2:
            suggestions = self._recipe_outputs()
            self.fields["outputs"].label = "Outputs of the recipe's serve function"
            self.fields["outputs"].help_text = "TF2 checkpoints are frozen through the run's recipe; all its outputs are kept."
            for name in ("other_outputs", "clear_devices", "variables_allowlist", "variables_denylist"):
                del self.fields[name]
        else:
            suggestions = self.outline.suggestions[:SUGGESTIONS_SHOWN] if self.outline else []
        self.fields["outputs"].choices = [(name, name) for name in suggestions]
        if suggestions and not self.is_bound:
            self.initial["outputs"] = suggestions[:1] if not self.tf2 else suggestions

    def _recipe_outputs(self) -> list[str]:
        from persistence.recipes import RecipeError, load_recipe

        try:
            return list(load_recipe(self.checkpoint.run.recipe_path()).output_names)
        except RecipeError as exc:
            self.problem = f"TF2 checkpoints are frozen through the run's recipe, which cannot be loaded: {exc}"
            return []

    @property
    def can_freeze(self) -> bool:
        return not self.problem

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.problem:
            raise forms.ValidationError(self.problem)
        typed = _split_names(cleaned.get("other_outputs", ""))
        outputs = list(dict.fromkeys([*(cleaned.get("outputs") or []), *typed]))
        if problem := _typed_names_problem(typed):
            self.add_error("other_outputs", problem)
        elif not outputs and not self.tf2:
            self.add_error("other_outputs", "Choose at least one output node.")
        elif self.outline is not None and (problem := self.outline.unknown_nodes_message(outputs, matched=FUZZY_MATCHED_NAMES)):
            self.add_error("other_outputs", problem)
        for field in ("variables_allowlist", "variables_denylist"):
            names = [_node(n) for n in _split_names(cleaned.get(field, ""))]
            cleaned[field] = names
            if problem := _typed_names_problem(names):
                self.add_error(field, problem)
            elif self.outline is not None and (problem := self.outline.unknown_variables_message(names, matched=FUZZY_MATCHED_NAMES)):
                self.add_error(field, problem)
        if set(cleaned.get("variables_allowlist") or []) & set(cleaned.get("variables_denylist") or []):
            self.add_error("variables_denylist", "A variable cannot be both allowed and denied.")
        cleaned["all_outputs"] = outputs
        return cleaned

    def job_params(self) -> dict:
        data = self.cleaned_data
        return {
            "outputs": data["all_outputs"],
            "clear_devices": bool(data.get("clear_devices", True)),
            "variables_allowlist": data.get("variables_allowlist") or [],
            "variables_denylist": data.get("variables_denylist") or [],
        }


class VerifyForm(forms.Form):
    """Verify a checkpoint; optionally run one output after restoring it."""

    output = forms.CharField(required=False, max_length=500)

    def __init__(self, *args, checkpoint, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint = checkpoint

    def clean_output(self) -> str:
        output = self.cleaned_data.get("output", "").strip()
        if output:
            outline, problem = outline_for_checkpoint(self.checkpoint)
            if problem:
                raise forms.ValidationError(f"Cannot run {output}: {problem}")
            if outline is not None and (message := outline.unknown_nodes_message([output], matched=FUZZY_MATCHED_NAMES)):
                raise forms.ValidationError(message)
        return output

    def job_params(self) -> dict:
        return {"output": self.cleaned_data["output"]} if self.cleaned_data.get("output") else {}


# --- retention ---------------------------------------------------------------------------------

_DB_INT_MAX = 2**31 - 1  # PositiveIntegerField on PostgreSQL: larger would be a database error


def unrecorded_metric_warning(metric: str, keep_best_n: int, recorded: list[str]) -> str:
    """What to tell a user whose best-N rule ranks by a metric no checkpoint of the run has."""
    known = f" Metrics it records: {', '.join(recorded)}." if recorded else " It records no metrics."
    return f"No checkpoint of this run has metric “{metric}”; the best-{keep_best_n} rule keeps nothing.{known}"


class RetentionPolicyForm(forms.Form):
    """A run's retention policy. Empty turns a rule off; a checkpoint goes only if no rule keeps it."""

    max_to_keep = forms.IntegerField(
        required=False, min_value=0, max_value=_DB_INT_MAX, label="Keep the newest",
        help_text="Checkpoints by step (TensorFlow's max_to_keep). Empty or 0 keeps every checkpoint.",
    )
    keep_checkpoint_every_n_hours = forms.FloatField(
        required=False, min_value=0, label="Also keep one every … hours",
        help_text="Among the older ones, as TensorFlow's CheckpointManager does (fractions like 0.5 work). "
                  "Only applies with “Keep the newest” set.",
    )
    keep_every_n_steps = forms.IntegerField(
        required=False, min_value=1, max_value=_DB_INT_MAX, label="Keep every … steps",
        help_text="Keeps checkpoints whose step is a multiple of this.",
    )
    keep_best_n = forms.IntegerField(
        required=False, min_value=0, max_value=_DB_INT_MAX, label="Keep the best",
        help_text="Checkpoints by the metric below.",
    )
    best_metric = forms.CharField(required=False, max_length=100, label="Metric", help_text="e.g. accuracy or loss.")
    best_mode = forms.ChoiceField(choices=Run.BEST_MODE_CHOICES, label="Best is")
    min_age_seconds = forms.IntegerField(
        min_value=0, max_value=_DB_INT_MAX, label="Never delete younger than (seconds)",
        help_text="A live trainer may still be writing a young checkpoint.",
    )
    protect_exported = forms.BooleanField(required=False, label="Keep checkpoints that have an export")
    auto_prune = forms.BooleanField(required=False, label="Prune automatically after every scan")

    def __init__(self, *args, metric_names: list[str] | None = None, has_metric=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.metric_names = metric_names or []  # offered as suggestions (a <datalist>)
        self.fields["best_metric"].widget.attrs["list"] = "metric-names"
        self._has_metric = has_metric  # name -> whether any checkpoint of the run recorded it

    @classmethod
    def for_run(cls, run: Run, data=None, **kwargs) -> RetentionPolicyForm:
        def has_metric(name: str) -> bool:
            return name in kwargs.get("metric_names", ()) or run.checkpoints.filter(metrics__has_key=name).exists()

        return cls(data, initial=retention.retention_values(run), has_metric=has_metric, **kwargs)

    @property
    def warnings(self) -> list[str]:
        """Rules that are valid but cannot do what they say for this run (saved all the same)."""
        if self.is_bound:
            values = self.cleaned_data if self.is_valid() else {}
        else:
            values = self.initial
        keep_best_n, metric = values.get("keep_best_n"), (values.get("best_metric") or "").strip()
        if not keep_best_n or not metric or self._has_metric is None or self._has_metric(metric):
            return []
        return [unrecorded_metric_warning(metric, keep_best_n, self.metric_names)]

    def clean_best_metric(self) -> str:
        return self.cleaned_data.get("best_metric", "").strip()

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        from persistence.retention import RetentionPolicy

        if cleaned.get("keep_best_n") and not cleaned.get("best_metric"):
            self.add_error("best_metric", "Name the metric that ranks checkpoints (e.g. accuracy or loss).")
            return cleaned
        rules = {k: v for k, v in cleaned.items() if k != "auto_prune"}
        # The fields already check what the engine checks; this keeps the two from drifting apart.
        for message in RetentionPolicy(**{**rules, "best_metric": rules["best_metric"] or None}).validate():
            field = message.split(" ", 1)[0]
            self.add_error(field if field in self.fields else None, message)
        if cleaned.get("keep_checkpoint_every_n_hours") and not cleaned.get("max_to_keep"):
            self.add_error(
                "keep_checkpoint_every_n_hours",
                "Set “Keep the newest” too: like TensorFlow, this rule only picks among checkpoints beyond the newest N.",
            )
        return cleaned


class PinForm(forms.Form):
    """Pin (keep whatever the policy says) or unpin a checkpoint; a pin needs its reason."""

    action = forms.ChoiceField(choices=[("pin", "Pin"), ("unpin", "Unpin")])
    reason = forms.CharField(required=False, max_length=255)

    def clean(self):
        cleaned = super().clean()
        cleaned["reason"] = (cleaned.get("reason") or "").strip()
        if cleaned.get("action") == "pin" and not cleaned["reason"]:
            self.add_error("reason", "Say why this checkpoint is pinned (e.g. “shipped as v3”).")
        return cleaned


class PartialRestoreForm(forms.Form):
    """Restore some of a checkpoint's variables into a recipe's fresh graph (the seed's transfer learning)."""

    recipe = forms.ChoiceField(help_text="The graph to restore into (a registered recipe).")
    variables = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), label="Graph variables to restore",
        help_text="Separated by commas or lines; blank restores every variable the checkpoint has.",
    )
    name_map = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), label="Read from other names",
        help_text="One graph_variable=checkpoint_name per line, like Saver(var_list={checkpoint_name: variable}).",
    )

    def __init__(self, *args, checkpoint, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from django.conf import settings

        self.checkpoint = checkpoint
        self.fields["recipe"].choices = [(path, path.rsplit(".", 1)[-1]) for path in settings.CHECKPOINT_RECIPES]
        self.fields["recipe"].initial = checkpoint.run.recipe_path()

    def clean_variables(self) -> list[str]:
        return [_node(n) for n in _split_names(self.cleaned_data.get("variables", ""))]

    def clean_name_map(self) -> dict[str, str]:
        from persistence.restore import unknown_names_message

        mapping, problems = {}, []
        for number, raw in enumerate(self.cleaned_data.get("name_map", "").splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            graph_name, sep, checkpoint_name = (_node(p.strip()) for p in line.partition("="))
            if not sep or not graph_name or not checkpoint_name:
                problems.append(f"Line {number} is not graph_variable=checkpoint_name.")
            else:
                mapping[graph_name] = checkpoint_name
        # Checkpoint keys are known without TensorFlow (the scan recorded them); graph names are
        # checked by the job, which builds the graph.
        recorded = {v["name"] for v in self.checkpoint.variables or []}
        unknown = [name for name in mapping.values() if recorded and name not in recorded]
        if unknown:
            message = unknown_names_message(unknown, recorded, what="checkpoint variable")
            problems.append(message[0].upper() + message[1:] + ".")
        if problems:
            raise forms.ValidationError(problems)
        return mapping

    def job_params(self) -> dict:
        from dashboard.jobs import PARTIAL_RESTORE_MODE

        data = self.cleaned_data
        return {"mode": PARTIAL_RESTORE_MODE, "recipe": data["recipe"], "variables": data["variables"],
                "name_map": data["name_map"]}
