import math

import keras
from keras import ops

from mistral_hub.layers.dense import EinsumDense
from mistral_hub.models.mistral.mistral_rotary_embedding import apply_rotary_embedding
from mistral_hub.models.mistral.mistral_rotary_embedding import rotary_cos_sin
from mistral_hub.utils import backend
from mistral_hub.utils.tensor_utils import call_layer
from mistral_hub.utils.tensor_utils import update_along_axis

# Masked scores are set to a large finite value rather than -inf so that a
# query row with every key masked (e.g. a left-padding position) yields a
# uniform distribution instead of NaNs.
_MASKED_SCORE = -1e9


@keras.saving.register_keras_serializable(package="mistral_hub")
class CachedMistralAttention(keras.layers.Layer):
    """Grouped-query self-attention with rotary embeddings and a KV cache.

    Query heads are grouped by the key/value head they share (query head `u`
    reads key/value head `u // (num_query_heads // num_key_value_heads)`, the
    same mapping as transformers' `repeat_kv`). Many queries (a prompt or a
    prefill chunk) go through `keras.ops.dot_product_attention` on JAX and
    torch, a fused kernel there; a single query (a decode step), and every
    call on TensorFlow, compute scores per group with one einsum, so the
    cached keys and values are never repeated in memory.

    The cache for one layer is a tensor of shape
    `(batch, 2, cache_length, num_key_value_heads, head_dim)` holding rotated
    keys (index 0) and values (index 1). Position `p` lives in slot
    `p % cache_length`, so a cache as long as the sliding window works as a
    rolling buffer; the caller supplies the matching `attention_mask`.

    Args:
        num_query_heads: int. Number of query heads.
        num_key_value_heads: int. Number of key/value heads.
        head_dim: int. Size of each head.
        rope_max_wavelength: float. RoPE base.
        rope_scaling_factor: float. Linear RoPE position scaling.
        kernel_initializer: Initializer for the projection kernels.
        dropout: float. Dropout rate on the attention probabilities.
        **kwargs: Standard `keras.layers.Layer` arguments.

    Example:
    >>> layer = CachedMistralAttention(4, 2, head_dim=8)
    >>> layer(keras.ops.ones((1, 3, 16))).shape
    (1, 3, 16)
    """

    def __init__(
        self,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        rope_max_wavelength=10000,
        rope_scaling_factor=1.0,
        kernel_initializer="glorot_uniform",
        dropout=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._num_query_heads = num_query_heads
        self._num_key_value_heads = num_key_value_heads
        self._head_dim = head_dim
        self._rope_max_wavelength = rope_max_wavelength
        self._rope_scaling_factor = rope_scaling_factor
        self._kernel_initializer = keras.initializers.get(kernel_initializer)
        self._dropout = dropout
        self._num_groups = num_query_heads // num_key_value_heads
        self._inv_norm_factor = 1.0 / math.sqrt(head_dim)

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]

        def projection(equation, output_shape, name):
            layer = EinsumDense(
                equation,
                output_shape=output_shape,
                kernel_initializer=self._kernel_initializer,
                dtype=self.dtype_policy,
                name=name,
            )
            return layer

        # Sublayer attribute names and layer names match keras_hub so that
        # keras_hub `model.weights.h5` files load without a path map.
        self._query_dense = projection(
            "bqm,muh->bquh", (None, self._num_query_heads, self._head_dim), "query"
        )
        self._query_dense.build(inputs_shape)
        self._key_dense = projection(
            "bkm,mvh->bkvh", (None, self._num_key_value_heads, self._head_dim), "key"
        )
        self._key_dense.build(inputs_shape)
        self._value_dense = projection(
            "bkm,mvh->bkvh", (None, self._num_key_value_heads, self._head_dim), "value"
        )
        self._value_dense.build(inputs_shape)
        self._dropout_layer = keras.layers.Dropout(
            rate=self._dropout, dtype=self.dtype_policy
        )
        # Same kernel layout (heads, head_dim, hidden) as keras_hub's
        # "bquh,uhm->bqm", but with the contracted letters in alphabetical
        # order: JAX's and torch's einsum contract in that order and would
        # otherwise transpose (copy) the whole kernel on every call.
        self._output_dense = projection(
            "bqah,ahm->bqm", (None, hidden_dim), "attention_output"
        )
        self._output_dense.build((None, None, self._num_query_heads, self._head_dim))
        self.built = True

    def rotary_embedding(self, positions):
        """RoPE tables for `positions` (`(T,)` or `(batch, T)`), see `call()`."""
        return rotary_cos_sin(
            positions,
            self._head_dim,
            self._rope_max_wavelength,
            self._rope_scaling_factor,
            self.compute_dtype,
        )

    def call(
        self,
        hidden_states,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        training=None,
        rotary_embedding=None,
    ):
        """Attends over the current tokens, or over the cache when given.

        Args:
            hidden_states: `(batch, T, hidden_dim)` inputs.
            attention_mask: bool/int `(batch, T, key_length)`; True where a
                query may attend to a key (slot, when a cache is used).
            cache: optional `(batch, 2, cache_length, kv_heads, head_dim)`.
            cache_update_index: int or 0-d tensor, the absolute position of
                the first token of `hidden_states`. With a cache, the new
                keys/values are written at slot `index % cache_length`; the
                `T` slots written must not wrap around the end of the cache.
                With a cache and no index the cache is only read.
            training: bool, enables dropout.
            rotary_embedding: optional `(cos, sin)` from
                `rotary_embedding(positions)` for the positions of
                `hidden_states`; computed from `cache_update_index` when
                omitted. A decoding model computes them once for all layers.

        Returns:
            The attention output, and the updated cache if one was given.
        """
        if rotary_embedding is None:
            start_index = 0 if cache_update_index is None else cache_update_index
            sequence_length = ops.shape(hidden_states)[1]
            positions = ops.arange(sequence_length, dtype="int32") + start_index
            rotary_embedding = self.rotary_embedding(positions)
        cos, sin = rotary_embedding
        query = apply_rotary_embedding(
            call_layer(self._query_dense, hidden_states), cos, sin
        )

        if cache is not None and cache_update_index is None:
            key, value = cache[:, 0], cache[:, 1]
        else:
            key = apply_rotary_embedding(
                call_layer(self._key_dense, hidden_states), cos, sin
            )
            value = call_layer(self._value_dense, hidden_states)
            if cache is not None:
                cache_length = ops.shape(cache)[2]
                new_entries = ops.stack((key, value), axis=1)
                slot = cache_update_index % cache_length
                cache = update_along_axis(cache, new_entries, slot, axis=2)
                key, value = cache[:, 0], cache[:, 1]

        attention_output = self._attend(query, key, value, attention_mask, training)
        attention_output = call_layer(self._output_dense, attention_output)
        if cache is not None:
            return attention_output, cache
        return attention_output

    def _use_fused_attention(self, query_length, training):
        # Fused attention beats the einsum path on many queries (prefill);
        # one query (decoding) is fastest as the grouped einsum, which never
        # repeats the cached keys and values.
        return (
            backend.has_fused_attention()
            and query_length != 1
            and not (training and self._dropout > 0)
        )

    def _attend(self, query, key, value, attention_mask, training):
        batch_size, query_length = ops.shape(query)[0], ops.shape(query)[1]
        if self._use_fused_attention(query_length, training):
            mask = None
            if attention_mask is not None:
                mask = ops.cast(attention_mask, "bool")[:, None, :, :]
            return ops.dot_product_attention(
                query, key, value, mask=mask, scale=self._inv_norm_factor
            )
        grouped_query = ops.reshape(
            query,
            (
                batch_size,
                query_length,
                self._num_key_value_heads,
                self._num_groups,
                self._head_dim,
            ),
        )
        scores = ops.einsum("bqkgd,bskd->bkgqs", grouped_query, key)
        scores = ops.cast(scores, "float32") * self._inv_norm_factor
        if attention_mask is not None:
            allowed = ops.cast(attention_mask, "bool")[:, None, None, :, :]
            scores = ops.where(allowed, scores, _MASKED_SCORE)
        probabilities = ops.softmax(scores, axis=-1)
        probabilities = ops.cast(probabilities, self.compute_dtype)
        probabilities = call_layer(
            self._dropout_layer, probabilities, training=bool(training)
        )
        output = ops.einsum("bkgqs,bskd->bqkgd", probabilities, value)
        return ops.reshape(
            output,
            (batch_size, query_length, self._num_query_heads, self._head_dim),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_query_heads": self._num_query_heads,
                "num_key_value_heads": self._num_key_value_heads,
                "head_dim": self._head_dim,
                "rope_max_wavelength": self._rope_max_wavelength,
                "rope_scaling_factor": self._rope_scaling_factor,
                "kernel_initializer": keras.initializers.serialize(
                    self._kernel_initializer
                ),
                "dropout": self._dropout,
            }
        )
        return config
