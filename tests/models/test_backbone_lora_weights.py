"""`Backbone.save_lora_weights` / `load_lora_weights` in keras_hub's format."""

import os

import h5py
import numpy as np
import pytest

from tests.utils.preset_helpers import TINY
from tests.utils.preset_helpers import backbone_logits
from tests.utils.preset_helpers import tiny_backbone


def _randomize_adapters(backbone, seed):
    # `lora_kernel_b` starts at zero: give the adapters values that change
    # the output.
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        if "lora_kernel" in variable.path:
            variable.assign(rng.normal(0.0, 0.3, size=tuple(variable.shape)).astype("float32"))


def _adapter_values(backbone):
    return {
        v.path: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        for v in backbone.weights
        if "lora_kernel" in v.path
    }


def _keras_hub_twin(backbone):
    keras_hub = pytest.importorskip("keras_hub")
    twin = keras_hub.models.MistralBackbone(**TINY)
    twin.set_weights(backbone.get_weights())
    return twin


def test_file_layout_matches_keras_hub(tmp_path):
    backbone = tiny_backbone(seed=1)
    backbone.enable_lora(rank=3)
    path = str(tmp_path / "adapters.lora.h5")
    backbone.save_lora_weights(path)
    with h5py.File(path, "r") as f:
        assert int(f["lora/vars/rank"][()]) == 3
        # The query and value projections of both blocks, numbered among the
        # backbone's layers that have weights (keras_hub's numbering).
        assert sorted(k for k in f["lora"] if k != "vars") == ["11", "20", "22", "9"]
        # Value (9) and query (11) kernels are (hidden, heads, head_dim).
        assert f["lora/9/vars/lora_kernel_a"].shape == (16, 2, 3)
        assert f["lora/11/vars/lora_kernel_a"].shape == (16, 4, 3)
        assert f["lora/11/vars/lora_kernel_b"].shape == (3, 4)
    assert os.listdir(tmp_path) == ["adapters.lora.h5"]


def test_keras_hub_file_loads_into_ours(tmp_path):
    backbone = tiny_backbone(seed=2)
    twin = _keras_hub_twin(backbone)
    twin.enable_lora(4)
    _randomize_adapters(twin, seed=5)
    path = str(tmp_path / "from_keras_hub.lora.h5")
    twin.save_lora_weights(path)

    base = backbone_logits(backbone)
    backbone.load_lora_weights(path)  # Enables LoRA with the file's rank.
    ours = backbone_logits(backbone)
    assert np.abs(ours - base).max() > 1e-2
    np.testing.assert_allclose(ours, backbone_logits(twin), rtol=1e-5, atol=1e-5)
    assert all(not w.trainable or "lora_kernel" in w.path for w in backbone.weights)
    assert len(backbone.trainable_weights) == 8


def test_our_file_loads_into_keras_hub(tmp_path):
    backbone = tiny_backbone(seed=3)
    twin = _keras_hub_twin(backbone)
    backbone.enable_lora(2)
    _randomize_adapters(backbone, seed=6)
    path = tmp_path / "ours.lora.h5"
    backbone.save_lora_weights(path)  # A path object works too.

    twin.load_lora_weights(str(path))
    np.testing.assert_allclose(
        backbone_logits(twin), backbone_logits(backbone), rtol=1e-5, atol=1e-5
    )


def test_round_trip_into_enabled_model_and_custom_targets(tmp_path):
    backbone = tiny_backbone(seed=4)
    backbone.enable_lora(2, target_layer_names=["key", "feedforward_gate_dense"])
    _randomize_adapters(backbone, seed=7)
    path = str(tmp_path / "custom.lora.h5")
    backbone.save_lora_weights(path)

    fresh = tiny_backbone(seed=4)
    fresh.load_lora_weights(path)
    np.testing.assert_array_equal(
        backbone_logits(fresh), backbone_logits(backbone)
    )
    enabled = tiny_backbone(seed=4)
    enabled.enable_lora(2, target_layer_names=["key", "feedforward_gate_dense"])
    enabled.load_lora_weights(path)
    assert _adapter_values(enabled).keys() == _adapter_values(backbone).keys()
    for key, value in _adapter_values(backbone).items():
        np.testing.assert_array_equal(_adapter_values(enabled)[key], value)


def test_save_errors(tmp_path):
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="enable_lora"):
        backbone.save_lora_weights(str(tmp_path / "a.lora.h5"))
    backbone.enable_lora(2)
    with pytest.raises(ValueError, match=r"\.lora\.h5.*Received: filepath=.*a\.weights\.h5"):
        backbone.save_lora_weights(str(tmp_path / "a.weights.h5"))
    assert os.listdir(tmp_path) == []


def test_load_errors_leave_the_model_unchanged(tmp_path):
    source = tiny_backbone(seed=1)
    source.enable_lora(4)
    _randomize_adapters(source, seed=1)
    rank4 = str(tmp_path / "rank4.lora.h5")
    source.save_lora_weights(rank4)

    # Rank mismatch with the enabled adapters.
    target = tiny_backbone(seed=1)
    target.enable_lora(2)
    before = _adapter_values(target)
    with pytest.raises(ValueError, match="rank=4.*rank=2"):
        target.load_lora_weights(rank4)
    for key, value in _adapter_values(target).items():
        np.testing.assert_array_equal(value, before[key])

    # Adapters on other layers than the file's.
    other = tiny_backbone(seed=1)
    other.enable_lora(4, target_layer_names=["key"])
    with pytest.raises(ValueError, match="holds LoRA weights for the layers"):
        other.load_lora_weights(rank4)

    # A backbone of another shape: checked before LoRA is enabled.
    wider = tiny_backbone(seed=1, num_query_heads=8, num_key_value_heads=4, hidden_dim=32)
    with pytest.raises(ValueError, match="shapes"):
        wider.load_lora_weights(rank4)
    assert not any("lora" in w.path for w in wider.weights)
    assert len(wider.trainable_weights) == len(wider.weights)

    # Not a LoRA file.
    weights = str(tmp_path / "model.weights.h5")
    source.save_weights(weights)
    with pytest.raises(ValueError, match="not a LoRA weights file"):
        wider.load_lora_weights(weights)
    text = tmp_path / "notes.lora.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a LoRA weights file"):
        wider.load_lora_weights(str(text))
    with pytest.raises(FileNotFoundError):
        wider.load_lora_weights(str(tmp_path / "missing.lora.h5"))



def test_lora_alpha_other_than_rank_survives_the_round_trip(tmp_path):
    # The file format stores the rank only; Keras' `enable_lora(rank,
    # lora_alpha=...)` lets a layer scale its update by `alpha / rank`.
    backbone = tiny_backbone(seed=8)
    backbone.enable_lora(2)
    _randomize_adapters(backbone, seed=9)
    scaled = [layer for layer in backbone._flatten_layers() if getattr(layer, "lora_enabled", False)]
    unscaled = backbone_logits(backbone)
    for layer in scaled:
        layer.lora_alpha = 6.0
    expected = backbone_logits(backbone)
    assert np.abs(expected - unscaled).max() > 1e-2
    path = str(tmp_path / "alpha.lora.h5")
    backbone.save_lora_weights(path)

    fresh = tiny_backbone(seed=8)
    fresh.load_lora_weights(path)
    np.testing.assert_allclose(backbone_logits(fresh), expected, rtol=1e-5, atol=1e-5)
    twin = _keras_hub_twin(tiny_backbone(seed=8))
    twin.load_lora_weights(path)
    np.testing.assert_allclose(backbone_logits(twin), expected, rtol=1e-5, atol=1e-5)

    enabled = tiny_backbone(seed=8)
    enabled.enable_lora(2)
    for layer in enabled._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_alpha = 6.0
    enabled.load_lora_weights(path)
    np.testing.assert_allclose(backbone_logits(enabled), expected, rtol=1e-5, atol=1e-5)
