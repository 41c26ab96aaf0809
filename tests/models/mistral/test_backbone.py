import os

import keras
import numpy as np
import pytest
from keras import ops

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from tests.models.mistral.hf_reference import hf_forward
from tests.models.mistral.hf_reference import keras_backbone_from_hf
from tests.models.mistral.hf_reference import make_hf_model
from tests.models.mistral.hf_reference import relative_error

SMALL = dict(
    vocabulary_size=10,
    num_layers=2,
    num_query_heads=8,
    num_key_value_heads=4,
    hidden_dim=16,
    intermediate_dim=8,
    sliding_window=2,
)


def _inputs(token_ids, padding_mask=None):
    token_ids = np.asarray(token_ids, "int32")
    if padding_mask is None:
        padding_mask = np.ones_like(token_ids)
    return {"token_ids": token_ids, "padding_mask": np.asarray(padding_mask, "int32")}


def _random_batch(vocab, lengths, total, seed=0):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(3, vocab, size=(len(lengths), total)).astype("int32")
    padding_mask = (np.arange(total)[None, :] < np.asarray(lengths)[:, None]).astype("int32")
    return token_ids * padding_mask, padding_mask


PARITY_CONFIGS = {
    "mha_no_window": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa2_window_shorter_than_sequence": dict(sliding_window=5),
    "gqa4_explicit_head_dim": dict(
        num_attention_heads=8, num_key_value_heads=2, head_dim=6, rope_theta=1e6
    ),
    "gqa2_window_tied_embeddings": dict(sliding_window=3, tie_word_embeddings=True),
}


@pytest.mark.parametrize("overrides", PARITY_CONFIGS.values(), ids=PARITY_CONFIGS.keys())
def test_hidden_states_and_logits_match_transformers(overrides):
    hf_model = make_hf_model(**overrides)
    backbone = keras_backbone_from_hf(hf_model)
    token_ids, padding_mask = _random_batch(97, lengths=[16, 11, 7], total=16)

    expected_hidden, expected_logits = hf_forward(hf_model, token_ids, padding_mask)
    hidden = backbone(_inputs(token_ids, padding_mask))
    logits = backbone.token_embedding(hidden, reverse=True)

    valid = padding_mask.astype(bool)
    hidden = ops.convert_to_numpy(hidden)
    logits = ops.convert_to_numpy(logits)
    assert relative_error(hidden[valid], expected_hidden[valid]) < 1e-4
    assert relative_error(logits[valid], expected_logits[valid]) < 1e-4


def test_bfloat16_logits_match_transformers_within_tolerance():
    import torch

    hf_model = make_hf_model(sliding_window=4)
    backbone = keras_backbone_from_hf(hf_model, dtype="bfloat16")
    hf_model = hf_model.to(torch.bfloat16)
    token_ids, padding_mask = _random_batch(97, lengths=[12, 12], total=12)
    _, expected_logits = hf_forward(hf_model, token_ids, padding_mask)
    hidden = backbone(_inputs(token_ids, padding_mask))
    logits = backbone.token_embedding(hidden, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "bfloat16"
    # bfloat16 keeps 8 mantissa bits; two layers of differently ordered
    # reductions stay within a few ulps of the largest logit.
    assert relative_error(ops.convert_to_numpy(ops.cast(logits, "float32")), expected_logits) < 3e-2


@pytest.mark.parametrize("sliding_window", [3, None])
def test_cached_forward_equals_full_forward(sliding_window):
    from mistral_hub.models.mistral.mistral_transformer_decoder import (
        compute_attention_mask,
    )

    backbone = MistralBackbone(**{**SMALL, "sliding_window": sliding_window, "vocabulary_size": 50})
    token_ids, padding_mask = _random_batch(50, lengths=[9, 9], total=9)
    expected = ops.convert_to_numpy(backbone(_inputs(token_ids, padding_mask)))

    # Feed one token at a time through per-layer rolling caches as long as
    # the window (or the sequence without one).
    cache_length = sliding_window or 9
    head_dim = backbone.resolved_head_dim
    caches = [
        ops.zeros((2, 2, cache_length, backbone.num_key_value_heads, head_dim))
        for _ in backbone.transformer_layers
    ]
    outputs = []
    for index in range(9):
        x = backbone.token_embedding(token_ids[:, index : index + 1])
        mask = compute_attention_mask(
            1, cache_length, start_index=index, sliding_window=sliding_window
        )
        for i, layer in enumerate(backbone.transformer_layers):
            x, caches[i] = layer(
                x,
                decoder_attention_mask=mask,
                self_attention_cache=caches[i],
                self_attention_cache_update_index=index,
            )
        outputs.append(ops.convert_to_numpy(backbone.layer_norm(x)))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), expected, atol=1e-5, rtol=1e-5)


def test_num_parameters_matches_formula():
    backbone = MistralBackbone(**SMALL)
    V, L, H, I = 10, 2, 16, 8
    Hq, KV, D = 8, 4, 2
    expected = 2 * V * H + L * (H * Hq * D + 2 * H * KV * D + Hq * D * H + 3 * H * I + 2 * H) + H
    assert backbone.count_params() == expected == 2704


def test_output_shape_and_token_embedding():
    backbone = MistralBackbone(**SMALL)
    output = backbone(_inputs(np.ones((2, 5))))
    assert tuple(output.shape) == (2, 5, 16)
    assert tuple(backbone.token_embedding(np.zeros((2, 3), "int32")).shape) == (2, 3, 16)
    assert backbone.name.startswith("mistral_backbone")


def test_variable_length_inputs():
    backbone = MistralBackbone(**SMALL)
    for length in (2, 3, 4):
        assert tuple(backbone(_inputs(np.ones((2, length)))).shape) == (2, length, 16)


def test_explicit_head_dim():
    backbone = MistralBackbone(**{**SMALL, "sliding_window": None, "head_dim": 4})
    assert backbone.transformer_layers[0]._self_attention_layer._head_dim == 4
    assert tuple(backbone(_inputs(np.ones((2, 5)))).shape) == (2, 5, 16)


def test_config_round_trip_gives_identical_outputs():
    backbone = MistralBackbone(**SMALL)
    restored = MistralBackbone.from_config(backbone.get_config())
    assert restored.get_config() == backbone.get_config()
    restored.set_weights(backbone.get_weights())
    inputs = _inputs(np.arange(10).reshape(2, 5) % 10)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(restored(inputs)), ops.convert_to_numpy(backbone(inputs))
    )


def test_keras_file_round_trip(tmp_path):
    backbone = MistralBackbone(**SMALL)
    path = os.path.join(tmp_path, "model.keras")
    backbone.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, MistralBackbone)
    inputs = _inputs(np.arange(10).reshape(2, 5) % 10)
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(inputs)),
        ops.convert_to_numpy(backbone(inputs)),
        atol=1e-6,
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "mixed_bfloat16"])
def test_dtype_policies(dtype):
    backbone = MistralBackbone(**SMALL, dtype=dtype)
    policy = keras.dtype_policies.get(dtype)
    output = backbone(_inputs(np.ones((1, 4))))
    assert keras.backend.standardize_dtype(output.dtype) == policy.compute_dtype
    for weight in backbone.weights:
        assert keras.backend.standardize_dtype(weight.dtype) == policy.variable_dtype
    assert backbone.dtype_policy.name == policy.name


def test_dtype_policy_object_is_accepted():
    backbone = MistralBackbone(**SMALL, dtype=keras.DTypePolicy("bfloat16"))
    assert backbone.dtype_policy.name == "bfloat16"


def test_loads_keras_hub_weight_files(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    reference = keras_hub.models.MistralBackbone(**SMALL)
    path = os.path.join(tmp_path, "model.weights.h5")
    reference.save_weights(path)
    backbone = MistralBackbone(**SMALL)
    backbone.load_weights(path)
    inputs = _inputs(np.arange(10).reshape(2, 5) % 10)
    np.testing.assert_allclose(
        ops.convert_to_numpy(backbone(inputs)),
        ops.convert_to_numpy(reference(inputs)),
        atol=1e-5,
    )


BAD_ARGUMENTS = [
    (dict(num_query_heads=6, num_key_value_heads=4), "num_query_heads"),
    (dict(hidden_dim=0), "hidden_dim"),
    (dict(num_layers=-1), "num_layers"),
    (dict(vocabulary_size=2.5), "vocabulary_size"),
    (dict(head_dim=3), "head_dim"),
    (dict(hidden_dim=24, num_query_heads=8, num_key_value_heads=4), "head_dim"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(intermediate_dim=None), "intermediate_dim"),
    (dict(dropout=1.5), "dropout"),
]


@pytest.mark.parametrize("overrides,argument", BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        MistralBackbone(**{**SMALL, **overrides})


BAD_INPUTS = [
    ({"token_ids": np.ones((2, 3, 4), "int32"), "padding_mask": np.ones((2, 3, 4), "int32")}, "rank"),
    ({"token_ids": np.ones((2, 3), "float32"), "padding_mask": np.ones((2, 3), "int32")}, "token_ids"),
    ({"token_ids": np.ones((2, 3), "int32")}, "padding_mask"),
    ({"token_ids": np.ones((2, 3), "int32"), "padding_mask": np.ones((2, 4), "int32")}, "shape"),
]


@pytest.mark.parametrize("inputs,message", BAD_INPUTS)
def test_bad_inputs_raise_value_error(inputs, message):
    backbone = MistralBackbone(**SMALL)
    with pytest.raises(ValueError, match=message):
        backbone(inputs)
