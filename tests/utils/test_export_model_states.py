"""`export_to_transformers` on fine-tuned and quantized models."""

import json
import os

import keras
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from tests.models.mistral.hf_reference import hf_forward
from tests.models.mistral.hf_reference import relative_error
from tests.utils.preset_helpers import tiny_causal_lm

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A fox is quick."]


def _load(**kwargs):
    return MistralCausalLM.from_preset("mistral_hub_demo", sequence_length=16, **kwargs)


def _hf_load(path):
    model = transformers.MistralForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def test_lora_fine_tuned_model_exports_merged_weights(tmp_path):
    causal_lm = _load(dtype="float32")
    causal_lm.backbone.enable_lora(rank=2)
    query = causal_lm.backbone.transformer_layers[0]._self_attention_layer._query_dense
    base_kernel = keras.ops.convert_to_numpy(query._kernel)
    causal_lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    causal_lm.fit(TEXTS, epochs=2, batch_size=2, verbose=0)

    causal_lm.export_to_transformers(str(tmp_path / "hf"))
    model = _hf_load(str(tmp_path / "hf"))
    # The adapters are in the exported weights...
    exported = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    assert not np.allclose(exported, base_kernel.reshape(base_kernel.shape[0], -1).T)
    # ...as the adapted model uses them: transformers gives its logits.
    x, _, _ = causal_lm.preprocessor(TEXTS)
    _, expected = hf_forward(model, x["token_ids"], x["padding_mask"])
    actual = keras.ops.convert_to_numpy(causal_lm(x))
    valid = np.asarray(x["padding_mask"]).astype(bool)
    assert relative_error(actual[valid], expected[valid]) < 1e-4


def test_lora_export_of_bfloat16_model_writes_the_merged_kernels(tmp_path):
    causal_lm = _load()
    causal_lm.backbone.enable_lora(rank=2)
    rng = np.random.default_rng(0)
    for variable in causal_lm.backbone.trainable_weights:
        variable.assign(rng.normal(0, 0.05, size=tuple(variable.shape)).astype("float32"))
    causal_lm.export_to_transformers(str(tmp_path / "hf"))
    tensors = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
    for i, layer in enumerate(causal_lm.backbone.transformer_layers):
        attention = layer._self_attention_layer
        for name, dense in (("q_proj", attention._query_dense), ("v_proj", attention._value_dense)):
            # What the layer multiplies by: `W + 2 / 2 * A @ B` in bfloat16.
            merged = keras.ops.convert_to_numpy(dense.kernel).astype("float32")
            written = tensors[f"model.layers.{i}.self_attn.{name}.weight"]
            # safetensors' numpy reader gives bfloat16 as raw 16-bit words.
            written = (written.view("uint16").astype("uint32") << 16).view("float32")
            np.testing.assert_array_equal(written, merged.reshape(merged.shape[0], -1).T)
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["dtype"] == "bfloat16"
    _hf_load(str(tmp_path / "hf"))


def test_quantized_model_export_is_refused_before_writing(tmp_path):
    causal_lm = tiny_causal_lm()
    causal_lm.quantize("int8")
    with pytest.raises(ValueError, match="quantized \\(mode 'int8'"):
        causal_lm.export_to_transformers(str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf")
    with pytest.raises(ValueError, match="Export the model before calling `quantize\\(\\)`"):
        causal_lm.backbone.export_to_transformers(str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf")
