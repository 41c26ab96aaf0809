"""`CausalLM.get_quantization_layer_structure` and Keras' GPTQ through it."""

import keras
import numpy as np

from tests.utils.preset_helpers import PADDING_MASK
from tests.utils.preset_helpers import TOKEN_IDS
from tests.utils.preset_helpers import tiny_causal_lm

# GPTQ walks every column of every kernel in Python: keep the model minimal.
MICRO = dict(
    num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=8, intermediate_dim=16
)


def test_structure_for_gptq_and_awq_only():
    causal_lm = tiny_causal_lm()
    backbone = causal_lm.backbone
    for mode in ("gptq", "awq"):
        structure = causal_lm.get_quantization_layer_structure(mode)
        assert set(structure) == {"pre_block_layers", "sequential_blocks"}
        assert structure["pre_block_layers"] == [backbone.token_embedding]
        assert structure["sequential_blocks"] == list(backbone.transformer_layers)
    for mode in ("int8", "int4", "float8", None):
        assert causal_lm.get_quantization_layer_structure(mode) is None


def test_gptq_quantizes_through_the_layer_structure():
    causal_lm = tiny_causal_lm(seed=1, **MICRO)
    x = {"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK}
    float_logits = keras.ops.convert_to_numpy(causal_lm(x))
    rng = np.random.default_rng(0)
    calibration = [rng.integers(1, 10, size=(40,)).astype("int32") for _ in range(4)]
    # Without a layer structure in the config, Keras asks the model.
    config = keras.quantizers.GPTQConfig(
        dataset=calibration,
        tokenizer=causal_lm.preprocessor.tokenizer,
        weight_bits=4,
        num_samples=4,
        sequence_length=8,
        group_size=8,
    )
    causal_lm.quantize("gptq", config=config)
    modes = {
        layer.name: layer.quantization_mode
        for layer in causal_lm.backbone._flatten_layers()
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
    }
    assert set(modes.values()) == {"gptq"}, modes
    assert len(modes) == 7
    assert np.abs(keras.ops.convert_to_numpy(causal_lm(x)) - float_logits).max() > 1e-2
    assert isinstance(causal_lm.generate("a", max_length=6, sampler="greedy"), str)
