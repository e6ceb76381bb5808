"""Forms, one module per feature; views import them from here."""

from .artifacts import FreezeForm, PartialRestoreForm, VerifyForm, outline_for_checkpoint
from .names import MAX_TO_KEEP_LIMIT, file_prefix_problem
from .retention import PinForm, RetentionPolicyForm, unrecorded_metric_warning
from .runs import RegisterRunForm
from .saves import ResaveForm, SaveJobForm, recipe_choices
from .webhooks import WebhookEndpointForm

__all__ = [
    "MAX_TO_KEEP_LIMIT", "FreezeForm", "PartialRestoreForm", "PinForm", "RegisterRunForm", "ResaveForm",
    "RetentionPolicyForm", "SaveJobForm", "VerifyForm", "file_prefix_problem", "outline_for_checkpoint",
    "recipe_choices", "unrecorded_metric_warning", "WebhookEndpointForm",
]
