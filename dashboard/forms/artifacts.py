"""Freeze, verify and partial restore: forms that name nodes and variables of a graph."""

from __future__ import annotations

import os

from django import forms

from persistence.graphoutline import GraphOutline, OutlineTooLarge

from .names import (
    _TYPED_NAMES_MAX_CHARS,
    FUZZY_MATCHED_NAMES,
    _node,
    _split_names,
    _typed_names_problem,
)

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

    from dashboard.staging import meta_file
    from persistence.files import PathOutsideRoots, resolve_inside

    meta = checkpoint.meta_path()
    if meta is not None and "://" in meta:
        # Fetched into the staging cache (no TensorFlow here), outlined like a local file.
        try:
            with meta_file(checkpoint) as local:
                return GraphOutline.read(local), ""
        except OutlineTooLarge:
            return None, ""
        except FileNotFoundError:
            return None, f"The meta graph {meta.rsplit('/', 1)[-1]} is missing in the bucket."
        except (OSError, ValueError) as exc:
            return None, f"The meta graph {meta.rsplit('/', 1)[-1]} cannot be read: {exc}"
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




class FreezeForm(forms.Form):
    """Export a checkpoint: the kind, output nodes (suggested), clear devices, variables allow- and deny-list."""

    kind = forms.ChoiceField(
        choices=[("frozen_pb", "Frozen GraphDef (.pb): one file, for C++ sessions and OpenCV"),
                 ("saved_model", "SavedModel: for TF Serving, TFLite and ONNX converters (downloads as .tar)"),
                 ("tflite", "TFLite (.tflite), float32"),
                 ("tflite_quantized", "TFLite (.tflite), dynamic-range quantized: smaller, reports its difference"),
                 ("onnx", "ONNX (.onnx), opset 17, checked with onnxruntime")],
        initial="frozen_pb", widget=forms.RadioSelect, label="Export as", required=False,
    )
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
        kind = cleaned.get("kind") or "frozen_pb"
        if kind != "frozen_pb":
            for field in ("variables_allowlist", "variables_denylist"):
                if cleaned.get(field):
                    # Only a frozen graph drops variables; the other kinds keep the checkpoint's.
                    self.add_error(field, "Only a frozen .pb can leave variables out; clear this or choose .pb.")
        cleaned["all_outputs"] = outputs
        return cleaned

    def job_params(self) -> dict:
        data = self.cleaned_data
        kind = data.get("kind") or "frozen_pb"
        return {
            "kind": "tflite" if kind == "tflite_quantized" else kind,
            "quantize": kind == "tflite_quantized",
            "outputs": data["all_outputs"],
            "clear_devices": bool(data.get("clear_devices", True)),
            "variables_allowlist": data.get("variables_allowlist") or [],
            "variables_denylist": data.get("variables_denylist") or [],
        }


def verify_output_choices(checkpoint) -> list[str] | None:
    """Outputs a verify may run after restoring (the freeze form's suggestions); None: type a name.

    Empty when there is no graph to restore into, None when the graph is too large to outline
    here (the job then checks a typed name).
    """
    from persistence.discovery import TF2

    if checkpoint.format == TF2 or not (checkpoint.has_own_meta or checkpoint.meta_source_id):
        return []
    outline, problem = outline_for_checkpoint(checkpoint)
    if outline is None:
        return None if not problem else []
    return list(outline.suggestions[:SUGGESTIONS_SHOWN])


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

