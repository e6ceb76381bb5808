"""Model recipes: the models that save jobs can train, restore jobs can run and freeze jobs can export.

A recipe is a small class that knows how to build its TensorFlow 1 graph, where its data comes
from, and which tensors are its inputs and outputs. Everything else (the training loop, the
Saver, restoring, freezing) is generic and lives in other ``persistence`` modules, so a team adds
a model by writing one recipe and listing its dotted path in the dashboard's settings.

This module must stay cheap to import: the web process reads recipe names and descriptions from
here and never imports TensorFlow. Only ``build_graph`` and ``build_tf2_module`` import it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


class RecipeError(Exception):
    """A recipe could not be found, imported or is not a recipe."""


@dataclass
class GraphHandles:
    """The tensors and ops of a freshly built TF1 graph that the training loop needs.

    Tensors are kept as ``Any`` so that this module does not import TensorFlow for the types.
    """

    inputs: dict[str, Any]  # placeholder op name -> placeholder tensor
    labels: Any  # placeholder fed with the label array
    outputs: dict[str, Any]  # output op name -> tensor (what restore and freeze look up by name)
    loss: Any
    train_op: Any
    global_step: Any  # the int64 variable the Saver's ``global_step=`` suffix comes from
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. {"accuracy": tensor}


@dataclass
class Dataset:
    """Training and held-out arrays; inputs are keyed by placeholder name like a feed dict."""

    train_inputs: dict[str, np.ndarray]
    train_labels: np.ndarray
    eval_inputs: dict[str, np.ndarray]
    eval_labels: np.ndarray

    @property
    def train_size(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def eval_size(self) -> int:
        return int(self.eval_labels.shape[0])


class Recipe:
    """Base class for a trainable model.

    Subclasses set the class attributes and implement ``build_graph``, ``make_data`` and
    ``sample_input``; ``build_tf2_module`` is optional (freezing TF2 object checkpoints needs it).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    input_names: ClassVar[list[str]] = []  # placeholder op names, e.g. ["x"]
    output_names: ClassVar[list[str]] = []  # output op names, e.g. ["probs"]
    batch_size: ClassVar[int] = 64

    def build_graph(self) -> GraphHandles:
        """Build the TF1 graph in the current default graph and return its handles."""
        raise NotImplementedError

    def make_data(self, seed: int = 0) -> Dataset:
        """Deterministic data for ``seed``: the same seed gives the same arrays on every machine."""
        raise NotImplementedError

    def sample_input(self) -> dict[str, np.ndarray]:
        """A small feed (by placeholder name) used to compare a frozen graph with its checkpoint."""
        raise NotImplementedError

    def build_tf2_module(self) -> Any:
        """A ``tf.Module`` whose variables mirror the TF1 ones, with a ``serve`` ``tf.function``."""
        raise NotImplementedError(f"recipe {self.name or type(self).__name__} has no TF2 module")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _split_dotted_path(dotted_path: str) -> tuple[str, str]:
    if ":" in dotted_path:
        module_name, _, attr = dotted_path.partition(":")
    else:
        module_name, _, attr = dotted_path.rpartition(".")
    if not module_name or not attr:
        raise RecipeError(
            f"recipe path {dotted_path!r} must look like 'package.module:Recipe' or 'package.module.Recipe'"
        )
    return module_name, attr


def load_recipe(dotted_path: str) -> Recipe:
    """Import ``"package.module:attr"`` or ``"package.module.attr"`` and return a recipe instance.

    ``attr`` may be a ``Recipe`` subclass (instantiated without arguments) or an instance.
    """
    if not isinstance(dotted_path, str) or not dotted_path.strip():
        raise RecipeError("recipe path is empty")
    module_name, attr = _split_dotted_path(dotted_path.strip())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"cannot import module {module_name!r} for recipe {dotted_path!r}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise RecipeError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, type) and issubclass(target, Recipe):
        try:
            return target()
        except Exception as exc:
            raise RecipeError(f"cannot instantiate recipe {dotted_path!r}: {exc}") from exc
    if isinstance(target, Recipe):
        return target
    raise RecipeError(f"{dotted_path!r} is not a Recipe subclass or instance (got {type(target).__name__})")


__all__ = ["Dataset", "GraphHandles", "Recipe", "RecipeError", "load_recipe"]
