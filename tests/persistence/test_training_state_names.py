"""Which checkpoint variables are optimizer or training state, by name (the compare page's
"model weights only" switch)."""

from __future__ import annotations

import pytest

from persistence.training import is_training_state


@pytest.mark.parametrize("name", [
    "hidden/kernel/Adam", "hidden/kernel/Adam_1", "dense/bias/Momentum", "emb/RMSProp_1", "beta1_power",
    "beta2_power_1", "global_step", "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
    "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE", "model/dense/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE",
])
def test_optimizer_slots_and_counters_are_training_state(name):
    assert is_training_state(name)


@pytest.mark.parametrize("name", [
    "hidden/kernel", "output/bias", "Adam/kernel", "adam_layer/weights", "my_global_step_embedding",
    "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE",
])
def test_model_weights_are_not(name):
    assert not is_training_state(name)
