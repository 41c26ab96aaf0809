"""PEFT LoRA adapters on a backbone give `peft.PeftModel`'s logits."""

import json
import os

import keras
import numpy as np
import peft
import pytest
import torch

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.utils.adapters import load_peft_adapter
from tests.models.mistral.hf_reference import hf_forward
from tests.models.mistral.hf_reference import keras_backbone_from_hf
from tests.models.mistral.hf_reference import make_hf_model
from tests.utils.preset_helpers import backbone_logits
from tests.utils.preset_helpers import populate_hf_cache

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOKEN_IDS = np.array([[5, 17, 3, 9, 44, 2, 61], [8, 8, 1, 90, 12, 0, 0]], "int32")
PADDING_MASK = np.array([[1] * 7, [1] * 5 + [0] * 2], "int32")


def _peft_model(config, seed=1, **model_overrides):
    """A tiny random transformers Mistral with random non-zero adapters."""
    model = peft.get_peft_model(_base_model(**model_overrides), config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model


def _base_model(**overrides):
    return make_hf_model(sliding_window=4, **overrides)


def _keras_twin(**model_overrides):
    """The backbone holding `_base_model`'s weights (PEFT wraps its layers)."""
    return keras_backbone_from_hf(_base_model(**model_overrides))


def _peft_logits(peft_model):
    return hf_forward(peft_model, TOKEN_IDS, PADDING_MASK)[1]


def _assert_close(backbone, expected):
    valid = PADDING_MASK.astype(bool)
    actual = backbone_logits(backbone, TOKEN_IDS, PADDING_MASK)
    np.testing.assert_allclose(actual[valid], expected[valid], rtol=1e-4, atol=1e-4)


CONFIGS = {
    "all_projections": dict(r=4, lora_alpha=8, target_modules=ALL_MODULES),
    # Per-module ranks and alphas, rsLoRA scaling, one layer of two.
    "patterns_rslora_one_layer": dict(
        r=3,
        lora_alpha=5,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"q_proj": 2},
        alpha_pattern={"down_proj": 1.5},
        layers_to_transform=[1],
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_peft(name, tmp_path):
    peft_model = _peft_model(peft.LoraConfig(**CONFIGS[name]))
    peft_model.save_pretrained(str(tmp_path))
    expected = _peft_logits(peft_model)
    backbone = _keras_twin()
    without = backbone_logits(backbone, TOKEN_IDS, PADDING_MASK)
    assert np.abs(without - expected).max() > 1e-2  # the adapters matter
    load_peft_adapter(backbone, str(tmp_path))
    _assert_close(backbone, expected)
    # Left as `enable_lora` leaves a backbone: only adapters train.
    trainable = {w.path.rsplit("/", 1)[-1] for w in backbone.trainable_weights}
    assert trainable == {"lora_kernel_a", "lora_kernel_b"}


def test_loaded_adapter_merges_like_peft_merge_and_unload(tmp_path):
    peft_model = _peft_model(peft.LoraConfig(r=2, lora_alpha=4, target_modules=ALL_MODULES))
    peft_model.save_pretrained(str(tmp_path))
    causal_lm = MistralCausalLM(_keras_twin())
    load_peft_adapter(causal_lm, str(tmp_path))  # a task works too
    causal_lm.backbone.merge_lora()
    assert not [w.path for w in causal_lm.backbone.weights if "lora" in w.path]
    merged = peft_model.merge_and_unload()
    _assert_close(causal_lm.backbone, hf_forward(merged, TOKEN_IDS, PADDING_MASK)[1])


def test_loaded_adapter_round_trips_through_save_lora_weights(tmp_path):
    peft_model = _peft_model(peft.LoraConfig(r=2, lora_alpha=6, target_modules=ALL_MODULES))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    backbone = _keras_twin()
    load_peft_adapter(backbone, str(tmp_path / "adapter"))
    # One Keras rank for all layers, the PEFT scale inside the kernels.
    backbone.save_lora_weights(str(tmp_path / "peft.lora.h5"))
    fresh = _keras_twin()
    fresh.load_lora_weights(str(tmp_path / "peft.lora.h5"))
    _assert_close(fresh, _peft_logits(peft_model))


def test_quantized_backbone_takes_the_adapter(tmp_path):
    peft_model = _peft_model(peft.LoraConfig(r=2, lora_alpha=4, target_modules=ALL_MODULES))
    peft_model.save_pretrained(str(tmp_path))
    float_backbone = _keras_twin()
    load_peft_adapter(float_backbone, str(tmp_path))
    expected = backbone_logits(float_backbone, TOKEN_IDS, PADDING_MASK)
    backbone = _keras_twin()
    backbone.quantize("int8")
    load_peft_adapter(backbone, str(tmp_path))
    # The adapters run in float next to the int8 kernels: in training, and
    # outside autograd (a no-op off torch), where torch multiplies the int8
    # weights directly.
    actual = backbone_logits(backbone, TOKEN_IDS, PADDING_MASK)
    assert np.abs(actual - expected).max() < 0.02 * np.abs(expected).max()
    with torch.no_grad():
        served = backbone_logits(backbone, TOKEN_IDS, PADDING_MASK)
    assert np.abs(served - expected).max() < 0.02 * np.abs(expected).max()


def test_hf_handle_from_offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    peft_model = _peft_model(peft.LoraConfig(r=2, lora_alpha=2, target_modules=["o_proj"]))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    cache = str(tmp_path / "hf_cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    populate_hf_cache(cache, "someone/mistral-lora", str(tmp_path / "adapter"))
    backbone = _keras_twin()
    load_peft_adapter(backbone, "hf://someone/mistral-lora")
    _assert_close(backbone, _peft_logits(peft_model))


def _edit_config(directory, **changes):
    path = os.path.join(directory, "adapter_config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def test_bad_adapters_raise_and_leave_the_backbone_unchanged(tmp_path):
    peft_model = _peft_model(peft.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"]))
    adapter = str(tmp_path / "adapter")
    peft_model.save_pretrained(adapter)
    backbone = _keras_twin()
    weight_count = len(backbone.weights)

    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_peft_adapter(backbone, str(tmp_path / "no_such_dir"))
    with pytest.raises(TypeError, match="MistralBackbone"):
        load_peft_adapter(keras.layers.Dense(2), adapter)
    _edit_config(adapter, use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        load_peft_adapter(backbone, adapter)
    _edit_config(adapter, use_dora=False, peft_type="IA3")
    with pytest.raises(ValueError, match="'IA3' adapter"):
        load_peft_adapter(backbone, adapter)
    _edit_config(adapter, peft_type="LORA")

    # An adapter trained with `modules_to_save` holds full weights too.
    saving = _peft_model(
        peft.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    saving.save_pretrained(str(tmp_path / "saving"))
    with pytest.raises(ValueError, match="lm_head"):
        load_peft_adapter(backbone, str(tmp_path / "saving"))

    # An adapter for a wider model.
    wide = _peft_model(peft.LoraConfig(r=2, target_modules=["q_proj"]), hidden_size=48)
    wide.save_pretrained(str(tmp_path / "wide"))
    with pytest.raises(ValueError, match=r"q_proj.*expected \(r, 32\)"):
        load_peft_adapter(backbone, str(tmp_path / "wide"))
    assert len(backbone.weights) == weight_count

    load_peft_adapter(backbone, adapter)
    with pytest.raises(ValueError, match="already has LoRA adapters.*merge_lora"):
        load_peft_adapter(backbone, adapter)
