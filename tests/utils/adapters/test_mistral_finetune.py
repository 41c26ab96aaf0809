"""mistral-finetune `lora.safetensors` on a backbone.

The reference merges the adapters as mistral-inference's `load_lora` does
(`W + scaling * lora_B @ lora_A`, on weights in Mistral's own layout), then
converts the merged weights to transformers' layout as the Mistral
checkpoint loader does, and runs transformers' `MistralForCausalLM`.
"""

import copy
import json

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from mistral_hub.utils.adapters import load_mistral_lora
from mistral_hub.models.mistral import mistral_checkpoint_conversion as convert_mistral
from tests.models.mistral.hf_reference import hf_forward
from tests.models.mistral.hf_reference import keras_backbone_from_hf
from tests.models.mistral.hf_reference import make_hf_model
from tests.utils.preset_helpers import backbone_logits

TOKEN_IDS = np.array([[5, 17, 3, 9, 44, 2, 61], [8, 8, 1, 90, 12, 0, 0]], "int32")
PADDING_MASK = np.array([[1] * 7, [1] * 5 + [0] * 2], "int32")


def _rope_heads(config, name):
    if name.endswith("q_proj.weight"):
        return config.num_attention_heads
    if name.endswith("k_proj.weight"):
        return config.num_key_value_heads
    return None


def _native_lora(model, rank=3, seed=0):
    """Random adapters for every projection, named as mistral-finetune does,
    rounded to bfloat16 (its default save dtype)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, parameter in model.state_dict().items():
        if name.endswith("_proj.weight"):
            module = convert_mistral.mistral_tensor_name(name)[: -len(".weight")]
            out_features, in_features = parameter.shape
            for matrix, shape in (("A", (rank, in_features)), ("B", (out_features, rank))):
                value = 0.2 * rng.standard_normal(shape)
                tensors[f"{module}.lora_{matrix}.weight"] = value.astype(ml_dtypes.bfloat16)
    return tensors


def _merged_reference(model, tensors, scaling):
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in merged.named_parameters():
            if not name.endswith("_proj.weight"):
                continue
            module = convert_mistral.mistral_tensor_name(name)[: -len(".weight")]
            if f"{module}.lora_A.weight" not in tensors:
                continue
            lora_a = tensors[f"{module}.lora_A.weight"].astype("float32")
            lora_b = tensors[f"{module}.lora_B.weight"].astype("float32")
            weight = parameter.numpy()
            heads = _rope_heads(model.config, name)
            if heads:
                weight = convert_mistral.rope_unpermute(weight, heads)
            weight = weight + scaling * lora_b @ lora_a
            if heads:
                weight = convert_mistral.rope_permute(weight, heads)
            parameter.copy_(torch.from_numpy(weight))
    return merged


def _assert_matches(backbone, reference):
    valid = PADDING_MASK.astype(bool)
    expected = hf_forward(reference, TOKEN_IDS, PADDING_MASK)[1]
    actual = backbone_logits(backbone, TOKEN_IDS, PADDING_MASK)
    np.testing.assert_allclose(actual[valid], expected[valid], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def model():
    return make_hf_model(sliding_window=4)


def test_checkpoint_directory_with_params_scaling(model, tmp_path):
    tensors = _native_lora(model)
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    (tmp_path / "params.json").write_text(
        json.dumps({"dim": 32, "lora": {"enable": True, "rank": 3, "scaling": 1.5}})
    )
    backbone = keras_backbone_from_hf(model)
    unadapted = backbone_logits(backbone, TOKEN_IDS, PADDING_MASK)
    load_mistral_lora(backbone, str(tmp_path))
    _assert_matches(backbone, _merged_reference(model, tensors, 1.5))
    assert np.abs(backbone_logits(backbone, TOKEN_IDS, PADDING_MASK) - unadapted).max() > 1e-2


def test_file_path_default_and_explicit_scaling(model, tmp_path):
    tensors = _native_lora(model, rank=2, seed=1)
    # Query and key adapters only: the ones whose rows need RoPE permuting.
    tensors = {k: v for k, v in tensors.items() if ".wq." in k or ".wk." in k}
    path = tmp_path / "lora.safetensors"
    save_file(tensors, str(path))
    backbone = keras_backbone_from_hf(model)
    load_mistral_lora(backbone, path)
    _assert_matches(backbone, _merged_reference(model, tensors, 2.0))
    backbone = keras_backbone_from_hf(model)
    load_mistral_lora(backbone, str(path), scaling=0.5)
    _assert_matches(backbone, _merged_reference(model, tensors, 0.5))


def test_bad_checkpoints_raise(model, tmp_path):
    tensors = _native_lora(model, rank=2)
    backbone = keras_backbone_from_hf(model)
    weight_count = len(backbone.weights)
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ValueError, match="scaling"):
        load_mistral_lora(backbone, str(tmp_path), scaling=-1.0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mistral_lora(backbone, str(tmp_path / "missing" / "lora.safetensors"))
    tensors["layers.0.attention_norm.weight"] = np.ones(32, "float32")
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ValueError, match="attention_norm"):
        load_mistral_lora(backbone, str(tmp_path))
    tensors.pop("layers.0.attention_norm.weight")
    tensors.pop("layers.1.feed_forward.w3.lora_B.weight")
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ValueError, match=r"only `lora_A` for `layers.1.feed_forward.w3`"):
        load_mistral_lora(backbone, str(tmp_path))
    assert len(backbone.weights) == weight_count
