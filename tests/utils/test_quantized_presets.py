"""Quantized models through `save_to_preset` and `.keras` files.

A saved quantized model must load bit-identical: the same per-layer
quantization, the same float dtype for the other layers, the same logits.
"""

import keras
import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A fox is quick."]
PROMPT = "The quick brown"


def _load(**kwargs):
    return MistralCausalLM.from_preset("mistral_hub_demo", sequence_length=16, **kwargs)


def _logits(causal_lm, x):
    return keras.ops.convert_to_numpy(causal_lm(x)).astype("float32")


def _policies(causal_lm):
    """`{layer path: effective policy name}` of every layer with a path."""
    policies = {}
    for layer in causal_lm.backbone._flatten_layers(include_self=False):
        if not layer.path:
            continue
        policy = layer.dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            policy = policy[layer.path]
        policies[layer.path] = policy.name
    return policies


@pytest.mark.parametrize("mode", ["int8", "int4", "float8"])
def test_quantized_model_loads_bit_identical(tmp_path, mode):
    # The demo preset is bfloat16: float8 is quantized from bfloat16 too.
    causal_lm = _load()
    causal_lm.quantize(mode)
    policies = _policies(causal_lm)
    assert any(name.startswith(mode) for name in policies.values())
    x, _, _ = causal_lm.preprocessor(TEXTS)
    logits = _logits(causal_lm, x)
    text = causal_lm.generate(PROMPT, max_length=12, sampler="greedy")

    causal_lm.save_to_preset(tmp_path / "preset")
    causal_lm.save(tmp_path / "model.keras")
    # Saving leaves the live model as it was.
    assert _policies(causal_lm) == policies

    from_keras_file = keras.saving.load_model(tmp_path / "model.keras")
    from_preset = MistralCausalLM.from_preset(tmp_path / "preset")
    for restored in (from_keras_file, from_preset):
        assert _policies(restored) == policies
        np.testing.assert_array_equal(_logits(restored, x), logits)
    # Same weights and policies give the same tokens; one route suffices.
    assert from_preset.generate(PROMPT, max_length=12, sampler="greedy") == text
