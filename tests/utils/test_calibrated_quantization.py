"""Calibrated quantization (GPTQ, AWQ) of the task and of the backbone alone.

Like `test_quantized_presets.py` for int8/int4/float8: a calibrated model
generates, saves to a preset and a `.keras` file, and loads back with the
same per-layer policies and identical logits.
"""

import keras
import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from tests.utils.preset_helpers import tiny_causal_lm

CALIBRATION = [
    "The quick brown fox jumps over the lazy dog.",
    "Beautiful is better than ugly. Explicit is better than implicit.",
    "A for statement repeats its body for each item of a sequence.",
]
PROMPT = "The quick brown"
# GPTQ walks every column of every kernel in Python (minutes for the demo
# preset on JAX): its tests use a micro model.
MICRO = dict(
    num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=8, intermediate_dim=16
)

# Keras' AWQ of 8-wide groups breaks on torch (see below): 32 wide ones.
AWQ_TINY = dict(num_layers=1, hidden_dim=32, intermediate_dim=64, dtype="bfloat16")


def _config(mode, tokenizer, group_size=8):
    config_class = {"gptq": keras.quantizers.GPTQConfig, "awq": keras.quantizers.AWQConfig}[mode]
    return config_class(
        dataset=CALIBRATION,
        tokenizer=tokenizer,
        num_samples=2,
        sequence_length=16,
        group_size=group_size,
    )


def _model(mode):
    """AWQ: bfloat16 weights, as the shipped presets; GPTQ: a float32 micro model."""
    if mode == "awq":
        return tiny_causal_lm(seed=1, sequence_length=16, **AWQ_TINY)
    return tiny_causal_lm(seed=1, sequence_length=16, **MICRO)


def _kernels(backbone):
    return [
        layer
        for layer in backbone._flatten_layers()
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
    ]


def _policies(backbone):
    """`{layer path: effective policy name}` of every layer with a path."""
    policies = {}
    for layer in backbone._flatten_layers(include_self=False):
        if not layer.path:
            continue
        policy = layer.dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            policy = policy[layer.path]
        policies[layer.path] = policy.name
    return policies


def _logits(causal_lm, x):
    return keras.ops.convert_to_numpy(causal_lm(x)).astype("float32")


@pytest.mark.parametrize("mode", ["gptq", "awq"])
def test_calibrated_model_generates_and_loads_bit_identical(tmp_path, mode):
    causal_lm = _model(mode)
    x, _, _ = causal_lm.preprocessor(CALIBRATION[:2])
    float_logits = _logits(causal_lm, x)

    # Groups of 8 break Keras' AWQ of a bfloat16 model on torch (the
    # logits error grows as large as the logits); 32 works on every backend.
    group_size = 32 if mode == "awq" else 8
    causal_lm.quantize(mode, config=_config(mode, causal_lm.preprocessor.tokenizer, group_size))
    kernels = _kernels(causal_lm.backbone)
    assert {layer.quantization_mode for layer in kernels} == {mode}
    assert all(getattr(layer, f"is_{mode}_calibrated") for layer in kernels)
    logits = _logits(causal_lm, x)
    # 4-bit weights move the logits, by less than the logits' own scale.
    error = np.abs(logits - float_logits).max()
    assert 1e-3 < error < 0.5 * np.abs(float_logits).max()
    # No stop token: random weights may well choose `</s>` first.
    text = causal_lm.generate(PROMPT, max_length=12, sampler="greedy", stop_token_ids=None)
    # The micro model's test vocabulary has no "The".
    assert "quick brown" in text and len(text) > len(PROMPT)

    policies = _policies(causal_lm.backbone)
    causal_lm.save_to_preset(tmp_path / "preset")
    causal_lm.save(tmp_path / "model.keras")
    assert _policies(causal_lm.backbone) == policies

    from_keras_file = keras.saving.load_model(tmp_path / "model.keras")
    from_preset = MistralCausalLM.from_preset(tmp_path / "preset")
    for restored in (from_keras_file, from_preset):
        assert _policies(restored.backbone) == policies
        np.testing.assert_array_equal(_logits(restored, x), logits)
    assert from_preset.generate(
        PROMPT, max_length=12, sampler="greedy", stop_token_ids=None
    ) == text


@pytest.mark.parametrize("mode", ["gptq", "awq"])
def test_backbone_alone_quantizes_like_the_task_from_its_calibration_data(mode):
    task = tiny_causal_lm(seed=2, **MICRO)
    alone = tiny_causal_lm(seed=2, **MICRO).backbone
    other_data = tiny_causal_lm(seed=2, **MICRO)
    tokenizer = task.preprocessor.tokenizer
    task.quantize(mode, config=_config(mode, tokenizer))
    # The backbone finds its own layer structure; the config gives none.
    alone.quantize(mode, config=_config(mode, tokenizer))
    assert {layer.quantization_mode for layer in _kernels(alone)} == {mode}
    for expected, actual in zip(task.backbone.weights, alone.weights):
        assert expected.path == actual.path
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(actual), keras.ops.convert_to_numpy(expected)
        )
    # Keras 3.15 alone never shows the layers their calibration inputs, so
    # every calibration set gave the same plain rounding (and keras_hub's
    # model still does).
    config = _config(mode, tokenizer)
    config.dataset = [text.upper() for text in CALIBRATION]
    other_data.quantize(mode, config=config)
    assert any(
        not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
        for a, b in zip(task.backbone.weights, other_data.backbone.weights)
    )


def test_gptq_refuses_16_bit_weights_before_changing_a_layer():
    backbone = tiny_causal_lm(seed=1, **MICRO).backbone
    backbone = type(backbone).from_config({**backbone.get_config(), "dtype": "bfloat16"})
    tokenizer = tiny_causal_lm(**MICRO).preprocessor.tokenizer
    with pytest.raises(ValueError, match=r"needs float32 weights.*bfloat16.*dtype=\"float32\""):
        backbone.quantize("gptq", config=_config("gptq", tokenizer))
    assert {layer.quantization_mode for layer in _kernels(backbone)} == {None}


def test_gptq_on_the_bfloat16_task_is_a_value_error():
    causal_lm = MistralCausalLM.from_preset("mistral_hub_demo", sequence_length=16)
    with pytest.raises(ValueError, match='dtype="float32"'):
        causal_lm.quantize("gptq", config=_config("gptq", causal_lm.preprocessor.tokenizer))
    assert {layer.quantization_mode for layer in _kernels(causal_lm.backbone)} == {None}
