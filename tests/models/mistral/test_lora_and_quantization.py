import keras
import numpy as np
import pytest
from keras import ops

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM

KWARGS = dict(
    vocabulary_size=32, num_layers=2, num_query_heads=4, num_key_value_heads=2,
    hidden_dim=16, intermediate_dim=32, sliding_window=4,
)


def _inputs():
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 32, size=(4, 8)).astype("int32")
    return {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}


def test_enable_lora_trains_only_adapters():
    keras.utils.set_random_seed(0)
    backbone = MistralBackbone(**KWARGS)
    inputs = _inputs()
    before = ops.convert_to_numpy(backbone(inputs))
    backbone.enable_lora(rank=2)
    # Adapters start as a zero update.
    np.testing.assert_allclose(ops.convert_to_numpy(backbone(inputs)), before, atol=1e-6)
    trainable = {w.path for w in backbone.trainable_weights}
    assert trainable and all("lora" in path for path in trainable)
    # query and value projections of both layers, two matrices each
    assert len(trainable) == 2 * 2 * 2

    causal_lm = MistralCausalLM(backbone)
    causal_lm.compile(optimizer=keras.optimizers.Adam(0.05))
    frozen = [ops.convert_to_numpy(w) for w in backbone.weights if "lora" not in w.path]
    y = np.roll(inputs["token_ids"], -1, axis=1)
    history = causal_lm.fit(inputs, y, epochs=10, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = [ops.convert_to_numpy(w) for w in backbone.weights if "lora" not in w.path]
    for a, b in zip(frozen, after):
        np.testing.assert_array_equal(a, b)


def test_enable_lora_errors():
    backbone = MistralBackbone(**KWARGS)
    with pytest.raises(ValueError, match="rank"):
        backbone.enable_lora(rank=0)
    with pytest.raises(ValueError, match="target_layer_names"):
        backbone.enable_lora(rank=2, target_layer_names=["no_such_layer"])


def test_int8_quantization_keeps_outputs_close_and_generates():
    keras.utils.set_random_seed(0)
    backbone = MistralBackbone(**KWARGS)
    causal_lm = MistralCausalLM(backbone)
    inputs = _inputs()
    reference = ops.convert_to_numpy(causal_lm(inputs))
    causal_lm.quantize("int8")
    quantized = ops.convert_to_numpy(causal_lm(inputs))
    assert np.max(np.abs(quantized - reference)) < 0.05 * np.max(np.abs(reference)) + 1e-3
    modes = {layer.quantization_mode for layer in backbone._flatten_layers() if layer.quantization_mode}
    assert modes == {"int8"}
    output = causal_lm.generate(
        {"token_ids": np.pad(inputs["token_ids"], ((0, 0), (0, 4))),
         "padding_mask": np.pad(inputs["padding_mask"], ((0, 0), (0, 4)))},
        stop_token_ids=None, sampler="greedy",
    )
    assert output["token_ids"].shape == (4, 12)


def test_generation_follows_weight_changes_after_compilation():
    keras.utils.set_random_seed(0)
    causal_lm = MistralCausalLM(MistralBackbone(**KWARGS))
    prompt = {"token_ids": np.pad(_inputs()["token_ids"], ((0, 0), (0, 4))),
              "padding_mask": np.pad(_inputs()["padding_mask"], ((0, 0), (0, 4)))}
    causal_lm.generate(prompt, stop_token_ids=None, sampler="greedy")
    causal_lm.backbone.enable_lora(rank=2)
    for variable in causal_lm.backbone.trainable_weights:
        variable.assign(np.full(variable.shape, 0.5, "float32"))
    after = causal_lm.generate(prompt, stop_token_ids=None, sampler="greedy")
    causal_lm.compile(sampler="greedy")  # drops every compiled function
    fresh = causal_lm.generate(prompt, stop_token_ids=None, sampler="greedy")
    np.testing.assert_array_equal(after["token_ids"], fresh["token_ids"])
