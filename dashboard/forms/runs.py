"""Tracking a directory as a run."""

from __future__ import annotations

from django import forms
from django.utils.text import slugify

from ..models import Run


class RegisterRunForm(forms.ModelForm):
    """Register a checkpoint directory as a run. The model's ``clean`` checks the directory."""

    class Meta:
        model = Run
        fields = ["name", "directory"]
        help_texts = {"name": "Letters, digits, hyphens and underscores; used in URLs."}
        widgets = {"directory": forms.TextInput()}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from django.conf import settings

        self.fields["name"].required = False
        self.fields["name"].help_text += " Defaults to the directory's name."
        roots = [str(r) for r in settings.CHECKPOINT_ROOTS] + list(getattr(settings, "CHECKPOINT_OBJECT_ROOTS", []))
        # An example that would be accepted: a directory inside the first root.
        if roots:
            self.fields["directory"].widget.attrs["placeholder"] = f"{roots[0].rstrip('/')}/my-run"
        self.fields["directory"].help_text = (
            "Absolute path (or s3:// or gs:// URL) of the directory your training writes checkpoints to; it must be inside "
            f"{'one of ' if len(roots) > 1 else ''}the checkpoint root{'s' if len(roots) > 1 else ''} "
            f"{', '.join(roots)}."
        )

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

