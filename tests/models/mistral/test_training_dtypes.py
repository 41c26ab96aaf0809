"""fit() on 16-bit presets: which dtype a loaded model gets, and that it trains.

Keras optimizers compute updates in each variable's dtype; on bfloat16
variables Adam's update is exactly zero (`beta_2=0.999` rounds to 1), so a
bfloat16 preset never trained. Every dtype path must now make the loss fall
and change the weights.
"""

import warnings

import keras
import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A fox is quick."]


@pytest.fixture
def global_policy():
    """Sets a global dtype policy for one test and restores Keras' default."""
    previous = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(previous)


def _load(**kwargs):
    return MistralCausalLM.from_preset("mistral_hub_demo", sequence_length=16, **kwargs)


def _compile(causal_lm, optimizer):
    # XLA compilation of the train step takes most of a TensorFlow CPU test;
    # the conversion happens before any tracing either way.
    jit_compile = "auto" if keras.config.backend() != "tensorflow" else False
    causal_lm.compile(optimizer=optimizer, jit_compile=jit_compile)


def _conversion_warnings(caught):
    return [str(w.message) for w in caught if "float32 storage" in str(w.message)]


def _values(variables):
    return [keras.ops.convert_to_numpy(v).astype("float32") for v in variables]


# path -> (from_preset kwargs, global policy, loaded variable dtype, whether
# fit() converts to float32 storage, policy while training)
PATHS = {
    "default": ({}, None, "bfloat16", True, "mixed_bfloat16"),
    "bfloat16": ({"dtype": "bfloat16"}, None, "bfloat16", True, "mixed_bfloat16"),
    "mixed_bfloat16": ({"dtype": "mixed_bfloat16"}, None, "float32", False, "mixed_bfloat16"),
    "global_mixed_bfloat16": ({}, "mixed_bfloat16", "float32", False, "mixed_bfloat16"),
    "float32": ({"dtype": "float32"}, None, "float32", False, "float32"),
}
if keras.config.backend() != "jax":
    # XLA:CPU has no float16 matrix products in the backward pass.
    PATHS["float16"] = ({"dtype": "float16"}, None, "float16", True, "mixed_float16")


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_fit_learns_on_every_dtype_path(path, global_policy):
    kwargs, policy, loaded_dtype, converts, trained_policy = PATHS[path]
    if policy is not None:
        global_policy(policy)
    causal_lm = _load(**kwargs)
    # Inference keeps the checkpoint's bfloat16 (or the requested) storage.
    assert causal_lm.backbone.token_embedding.embeddings.dtype == loaded_dtype
    _compile(causal_lm, keras.optimizers.Adam(1e-3))
    before = _values(causal_lm.trainable_variables)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # float16 loss scaling skips the first step, whose scaled gradients
        # overflow.
        epochs = 3 if trained_policy == "mixed_float16" else 2
        history = causal_lm.fit(TEXTS, epochs=epochs, batch_size=2, verbose=0)
    messages = _conversion_warnings(caught)
    assert len(messages) == (1 if converts else 0), messages
    if converts:
        assert f'dtype="{trained_policy}"' in messages[0]
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.5, losses
    after = _values(causal_lm.trainable_variables)
    for variable, old, new in zip(causal_lm.trainable_variables, before, after):
        assert not np.array_equal(old, new), f"{variable.path} did not change"
    assert causal_lm.backbone.dtype_policy.name == trained_policy
    assert causal_lm.backbone.token_embedding.compute_dtype == trained_policy.replace("mixed_", "")
    if trained_policy == "mixed_float16":
        assert isinstance(causal_lm.optimizer, keras.optimizers.LossScaleOptimizer)


def test_dtype_priority_on_load(tmp_path, global_policy):
    # The same rules for Keras presets and transformers checkpoints.
    _load().backbone.export_to_transformers(str(tmp_path / "hf"))
    for load in (_load, lambda **kwargs: MistralBackbone.from_preset(tmp_path / "hf", **kwargs)):
        global_policy("float32")
        # No policy set: the checkpoint's bfloat16.
        assert load().dtype_policy.name == "bfloat16"
        global_policy("mixed_bfloat16")
        # A global policy the user set wins over the checkpoint's dtype...
        assert load().dtype_policy.name == "mixed_bfloat16"
        # ...and an explicit `dtype` wins over both.
        model = load(dtype="bfloat16")
        assert model.dtype_policy.name == "bfloat16"
        assert model.weights[0].dtype == "bfloat16"


def test_conversion_computes_as_the_mixed_policy_and_saves(tmp_path):
    causal_lm = _load()
    twin = _load(dtype="mixed_bfloat16")
    x, y, sample_weight = causal_lm.preprocessor(TEXTS)
    # A zero learning rate: the step converts without changing any value.
    _compile(causal_lm, keras.optimizers.SGD(0.0))
    with pytest.warns(UserWarning, match="float32 storage"):
        causal_lm.train_on_batch(x, y, sample_weight=sample_weight)
    assert {v.dtype for v in causal_lm.weights} == {"float32"}
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(causal_lm(x)), keras.ops.convert_to_numpy(twin(x))
    )
    # Training again neither converts nor warns; the trained model saves
    # and loads back as the mixed policy it now has.
    _compile(causal_lm, keras.optimizers.Adam(1e-3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        causal_lm.fit(TEXTS, epochs=1, batch_size=2, verbose=0)
    assert not _conversion_warnings(caught)
    causal_lm.save_to_preset(tmp_path / "trained")
    restored = MistralCausalLM.from_preset(tmp_path / "trained")
    assert restored.backbone.dtype_policy.name == "mixed_bfloat16"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(causal_lm(x))
    )


def test_lora_learns_on_a_bfloat16_backbone():
    causal_lm = _load()
    causal_lm.backbone.enable_lora(rank=4)
    frozen = {v.path: v for v in causal_lm.backbone.weights if "lora" not in v.path}
    frozen_before = _values(frozen.values())
    _compile(causal_lm, keras.optimizers.Adam(1e-2))
    adapters_before = _values(causal_lm.trainable_variables)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = causal_lm.fit(TEXTS, epochs=2, batch_size=2, verbose=0)
    # The adapters are float32: nothing to convert, nothing to warn.
    assert not _conversion_warnings(caught)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.2, losses
    assert causal_lm.backbone.token_embedding.embeddings.dtype == "bfloat16"
    for old, new in zip(adapters_before, _values(causal_lm.trainable_variables)):
        assert not np.array_equal(old, new)
    for old, new in zip(frozen_before, _values(frozen.values())):
        np.testing.assert_array_equal(old, new)
