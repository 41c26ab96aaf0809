import keras
import numpy as np
import pytest
from keras import ops

from mistral_hub.models.mistral.mistral_attention import CachedMistralAttention
from mistral_hub.models.mistral.mistral_transformer_decoder import compute_attention_mask
from mistral_hub.utils.tensor_utils import call_layer


def _reference_attention(layer, hidden, positions, window):
    """Grouped-query attention with rotate-half RoPE, in float64 NumPy."""
    weights = {
        name: np.asarray(ops.convert_to_numpy(getattr(layer, name).kernel), "float64")
        for name in ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
    }
    head_dim = weights["_query_dense"].shape[-1]
    inverse_frequencies = 1.0 / 10000.0 ** (np.arange(0, head_dim, 2) / head_dim)
    angles = positions[:, None] * inverse_frequencies
    angles = np.concatenate([angles, angles], axis=-1)[None, :, None, :]

    def rope(x):
        half = head_dim // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * np.cos(angles) + rotated * np.sin(angles)

    hidden = hidden.astype("float64")
    query = rope(np.einsum("btm,muh->btuh", hidden, weights["_query_dense"]))
    key = rope(np.einsum("btm,muh->btuh", hidden, weights["_key_dense"]))
    value = np.einsum("btm,muh->btuh", hidden, weights["_value_dense"])
    groups = query.shape[2] // key.shape[2]
    key, value = np.repeat(key, groups, axis=2), np.repeat(value, groups, axis=2)
    scores = np.einsum("bquh,bkuh->buqk", query, key) / np.sqrt(head_dim)
    distance = positions[:, None] - positions[None, :]
    scores = np.where((distance >= 0) & (distance < window), scores, -np.inf)
    probabilities = np.exp(scores - scores.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    output = np.einsum("buqk,bkuh->bquh", probabilities, value)
    return np.einsum("bquh,uhm->bqm", output, weights["_output_dense"])


@pytest.mark.parametrize("query_length", [1, 4, 12])
def test_attention_matches_reference_with_window_and_cache(query_length):
    # Many queries take the fused kernel on JAX and torch (prefill), one
    # query the grouped einsum (decoding); a chunk of queries after a cache
    # is a prefill chunk. All must equal the reference, window included.
    keras.utils.set_random_seed(0)
    layer = CachedMistralAttention(4, 2, head_dim=8)
    layer.build((None, None, 16))
    hidden = np.random.default_rng(0).standard_normal((2, 12, 16)).astype("float32")
    expected = _reference_attention(layer, hidden, np.arange(12), window=5)
    start = 12 - query_length
    cache = ops.zeros((2, 2, 12, 2, 8))
    if start:
        _, cache = layer(
            hidden[:, :start],
            attention_mask=compute_attention_mask(start, 12, sliding_window=5),
            cache=cache,
            cache_update_index=0,
        )
    output, _ = layer(
        hidden[:, start:],
        attention_mask=compute_attention_mask(query_length, 12, start, sliding_window=5),
        cache=cache,
        cache_update_index=start,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(output), expected[:, start:], atol=1e-5, rtol=1e-4
    )


def test_per_row_positions_equal_rows_computed_alone():
    # Left-padded rows: row 1 starts 3 columns later, so its RoPE positions
    # and its attention start there; it must equal the unpadded row.
    keras.utils.set_random_seed(0)
    layer = CachedMistralAttention(4, 2, head_dim=8)
    layer.build((None, None, 16))
    hidden = np.random.default_rng(1).standard_normal((2, 7, 16)).astype("float32")
    starts = np.array([0, 3], "int32")
    positions = np.arange(7)[None, :] - starts[:, None]
    mask = compute_attention_mask(7, 7, sliding_window=4, sequence_starts=starts)
    batched = ops.convert_to_numpy(
        layer(hidden, attention_mask=mask, rotary_embedding=layer.rotary_embedding(positions))
    )
    for row, start in enumerate(starts):
        alone = layer(
            hidden[row : row + 1, start:],
            attention_mask=compute_attention_mask(7 - start, 7 - start, sliding_window=4),
        )
        np.testing.assert_allclose(
            batched[row, start:], ops.convert_to_numpy(alone)[0], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("variant", ["plain", "lora", "int8", "int8_lora", "mixed_bfloat16"])
def test_call_layer_equals_layer_call(variant):
    # The direct call must run exactly what `Layer.__call__` would: LoRA
    # adapters, int8 kernels, and (through the fallback) mixed precision.
    keras.utils.set_random_seed(0)
    dtype = "mixed_bfloat16" if variant == "mixed_bfloat16" else None
    dense = keras.layers.EinsumDense("btm,mh->bth", output_shape=(None, 6), dtype=dtype)
    dense.build((None, None, 8))
    if "int8" in variant:
        dense.quantize("int8")
    if "lora" in variant:
        dense.enable_lora(2)
        for variable in (dense.lora_kernel_a, dense.lora_kernel_b):
            variable.assign(np.full(variable.shape, 0.3, "float32"))
    x = ops.convert_to_tensor(
        np.random.default_rng(0).standard_normal((2, 3, 8)).astype("float32"),
        dtype=dense.compute_dtype,
    )
    expected = ops.convert_to_numpy(ops.cast(dense(x), "float32"))
    actual = ops.convert_to_numpy(ops.cast(call_layer(dense, x), "float32"))
    np.testing.assert_array_equal(actual, expected)
    if variant != "plain":
        plain = ops.matmul(ops.cast(x, "float32"), ops.cast(dense._kernel, "float32"))
        assert not np.allclose(actual, ops.convert_to_numpy(plain), atol=1e-3)
