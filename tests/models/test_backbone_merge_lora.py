"""`Backbone.merge_lora()`: adapters folded into plain weights."""

import keras
import keras_hub
import numpy as np
import pytest
import transformers

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from tests.models.mistral.hf_reference import hf_forward

KWARGS = dict(
    vocabulary_size=32, num_layers=2, num_query_heads=4, num_key_value_heads=2,
    hidden_dim=16, intermediate_dim=32, sliding_window=4,
)
TARGETS = [
    "token_embedding", "query", "key", "value", "attention_output",
    "feedforward_gate_dense", "feedforward_intermediate_dense", "feedforward_output_dense",
]


def _inputs():
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 32, size=(2, 7)).astype("int32")
    return {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}


def _adapted_causal_lm(mode=None, dtype=None):
    keras.utils.set_random_seed(0)
    causal_lm = MistralCausalLM(MistralBackbone(**KWARGS, dtype=dtype))
    if mode:
        causal_lm.quantize(mode)
    plain = _logits(causal_lm)
    causal_lm.backbone.enable_lora(2, target_layer_names=TARGETS)
    rng = np.random.default_rng(1)
    for variable in causal_lm.backbone.weights:
        if "lora" in variable.path:
            variable.assign(0.3 * rng.standard_normal(variable.shape).astype("float32"))
    return causal_lm, plain


def _logits(causal_lm):
    return keras.ops.convert_to_numpy(keras.ops.cast(causal_lm(_inputs()), "float32"))


def test_merge_keeps_logits_and_leaves_a_plain_trainable_model():
    causal_lm, plain = _adapted_causal_lm()
    backbone = causal_lm.backbone
    adapted = _logits(causal_lm)
    assert np.abs(adapted - plain).max() > 1e-2  # the adapters matter
    weight_count = len(backbone.weights)
    backbone.merge_lora()
    np.testing.assert_allclose(_logits(causal_lm), adapted, rtol=1e-5, atol=1e-6)
    assert not [w.path for w in backbone.weights if "lora" in w.path]
    assert len(backbone.weights) == weight_count - 2 * (1 + 7 * KWARGS["num_layers"])
    assert len(backbone.trainable_weights) == len(backbone.weights)
    layer_configs = [layer.get_config() for layer in backbone._flatten_layers()]
    assert not any("lora_rank" in config for config in layer_configs)
    # New adapters can be added and trained on top of the merged weights.
    backbone.enable_lora(2)
    np.testing.assert_allclose(_logits(causal_lm), adapted, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        MistralBackbone(**KWARGS).merge_lora()


def test_merged_bfloat16_weights_stay_bfloat16():
    causal_lm, _ = _adapted_causal_lm(dtype="bfloat16")
    adapted = _logits(causal_lm)
    causal_lm.backbone.merge_lora()
    kernel = causal_lm.backbone.transformer_layers[0]._self_attention_layer._query_dense.kernel
    assert keras.backend.standardize_dtype(kernel.dtype) == "bfloat16"
    # Rounding the merged kernels to bfloat16 is the only change.
    np.testing.assert_allclose(_logits(causal_lm), adapted, atol=0.05 * np.abs(adapted).max())


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_merge_into_quantized_weights_requantizes_as_keras_saves(mode, tmp_path):
    """Keras writes a quantized layer with adapters merged and requantized;
    loading that file into the same quantized model without adapters is the
    reference for merging in place."""
    causal_lm, unadapted = _adapted_causal_lm(mode)
    adapted = _logits(causal_lm)
    causal_lm.save_weights(str(tmp_path / "adapted.weights.h5"))
    # The config holds the quantization, not the adapters.
    reference = MistralCausalLM.from_config(causal_lm.get_config())
    reference.load_weights(str(tmp_path / "adapted.weights.h5"))

    causal_lm.backbone.merge_lora()
    merged = _logits(causal_lm)
    np.testing.assert_array_equal(merged, _logits(reference))
    modes = {
        layer.quantization_mode
        for layer in causal_lm.backbone._flatten_layers()
        if layer.quantization_mode
    }
    assert modes == {mode}
    assert not [w.path for w in causal_lm.backbone.weights if "lora" in w.path]
    # Requantization costs some precision but keeps what the adapters learnt.
    assert np.abs(merged - adapted).max() < 0.5 * np.abs(adapted - unadapted).max()


def test_merged_preset_loads_in_keras_hub_and_transformers(tmp_path):
    causal_lm, _ = _adapted_causal_lm()
    adapted = _logits(causal_lm)
    backbone = causal_lm.backbone
    backbone.merge_lora()
    backbone.save_to_preset(str(tmp_path / "preset"))
    theirs = keras_hub.models.MistralBackbone.from_preset(str(tmp_path / "preset"))
    assert not [w.path for w in theirs.weights if "lora" in w.path]
    hidden = theirs(_inputs())
    logits = keras.ops.convert_to_numpy(theirs.token_embedding(hidden, reverse=True))
    np.testing.assert_allclose(logits, adapted, rtol=1e-5, atol=1e-5)

    backbone.export_to_transformers(str(tmp_path / "hf"))
    model = transformers.MistralForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    _, hf_logits = hf_forward(model, **_inputs())
    np.testing.assert_allclose(hf_logits, adapted, rtol=1e-4, atol=1e-4)
