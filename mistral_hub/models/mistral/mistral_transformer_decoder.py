import keras
from keras import ops

from mistral_hub.layers.dense import Dense
from mistral_hub.models.mistral.mistral_attention import CachedMistralAttention
from mistral_hub.models.mistral.mistral_layer_norm import MistralLayerNormalization
from mistral_hub.utils.tensor_utils import call_layer


def compute_attention_mask(
    query_length,
    key_length,
    start_index=0,
    sliding_window=None,
    padding_mask=None,
    sequence_starts=None,
):
    """Causal, sliding-window and padding mask for (possibly cached) attention.

    Queries sit at absolute positions `start_index + t`. Key slot `s` holds
    the most recent position `p` with `p % key_length == s` written so far
    (the last one being the final query's position), which is the identity
    without a cache and the rolling-buffer layout with one. A query at `i`
    may see position `p` iff `0 <= p <= i` and, with a window `W`,
    `i - p < W` (the transformers convention).

    Args:
        query_length: int or 0-d tensor, number of queries `T`.
        key_length: int or 0-d tensor, number of key slots.
        start_index: int or 0-d tensor, position of the first query.
        sliding_window: optional int window size.
        padding_mask: optional `(batch, key_length)` mask of valid keys.
        sequence_starts: optional `(batch,)` int tensor: in row `b`,
            positions before `sequence_starts[b]` are left padding and are
            never attended to.

    Returns:
        A bool mask of shape `(batch or 1, T, key_length)`.
    """
    query_positions = ops.arange(query_length, dtype="int32") + start_index
    last_position = start_index + query_length - 1
    slots = ops.arange(key_length, dtype="int32")
    # `%`, not `ops.mod`: Keras' torch `mod` turns a symbolic `key_length`
    # into a constant, so `torch.compile` would specialize on the cache length.
    key_positions = last_position - (last_position - slots) % key_length
    query_positions = query_positions[:, None]
    key_positions = key_positions[None, :]
    allowed = ops.logical_and(key_positions >= 0, key_positions <= query_positions)
    if sliding_window is not None:
        allowed = ops.logical_and(
            allowed, query_positions - key_positions < sliding_window
        )
    allowed = allowed[None, :, :]
    if sequence_starts is not None:
        keys_valid = key_positions >= ops.cast(sequence_starts, "int32")[:, None, None]
        allowed = ops.logical_and(allowed, keys_valid)
    if padding_mask is not None:
        keys_valid = ops.cast(padding_mask, "bool")[:, None, :]
        allowed = ops.logical_and(allowed, keys_valid)
    return allowed


@keras.saving.register_keras_serializable(package="mistral_hub")
class MistralTransformerDecoder(keras.layers.Layer):
    """One Mistral decoder block: pre-norm attention and a SwiGLU MLP.

    `x + attention(rms_norm(x))`, then `x + down(up(h) * silu(gate(h)))` with
    `h = rms_norm(x)`; the SiLU runs in float32. Sublayer attribute and
    layer names match keras_hub's so that keras_hub weight files load.

    Args:
        intermediate_dim: int. Width of the MLP.
        num_query_heads: int. Number of query heads.
        num_key_value_heads: int. Number of key/value heads.
        rope_max_wavelength: float. RoPE base.
        rope_scaling_factor: float. Linear RoPE position scaling.
        activation: Gate activation; Mistral uses `"silu"`.
        layer_norm_epsilon: float. RMSNorm epsilon.
        kernel_initializer: Initializer for all kernels.
        sliding_window: int or None. Attention window size.
        dropout: float. Dropout on the attention probabilities.
        head_dim: int or None. Defaults to `hidden_dim // num_query_heads`.
        **kwargs: Standard `keras.layers.Layer` arguments.

    Example:
    >>> block = MistralTransformerDecoder(32, 4, 2, sliding_window=8)
    >>> block(keras.ops.ones((1, 5, 16))).shape
    (1, 5, 16)
    """

    def __init__(
        self,
        intermediate_dim,
        num_query_heads,
        num_key_value_heads,
        rope_max_wavelength=10000,
        rope_scaling_factor=1.0,
        activation="silu",
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        sliding_window=512,
        dropout=0,
        head_dim=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.intermediate_dim = intermediate_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.sliding_window = sliding_window
        self.dropout = dropout
        self.head_dim = head_dim
        self.supports_masking = True

    def build(self, decoder_sequence_shape):
        hidden_dim = decoder_sequence_shape[-1]
        head_dim = self.head_dim or hidden_dim // self.num_query_heads
        self._self_attention_layer = CachedMistralAttention(
            num_query_heads=self.num_query_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=head_dim,
            rope_max_wavelength=self.rope_max_wavelength,
            rope_scaling_factor=self.rope_scaling_factor,
            kernel_initializer=self.kernel_initializer,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="self_attention",
        )
        self._self_attention_layer.build(decoder_sequence_shape)
        self._self_attention_layernorm = MistralLayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="self_attention_layernorm",
        )
        self._self_attention_layernorm.build(decoder_sequence_shape)

        def dense(units, name):
            return Dense(
                units,
                use_bias=False,
                kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy,
                name=name,
            )

        self._feedforward_intermediate_dense = dense(
            self.intermediate_dim, "feedforward_intermediate_dense"
        )
        self._feedforward_intermediate_dense.build(decoder_sequence_shape)
        self._feedforward_gate_dense = dense(
            self.intermediate_dim, "feedforward_gate_dense"
        )
        self._feedforward_gate_dense.build(decoder_sequence_shape)
        self._feedforward_output_dense = dense(hidden_dim, "feedforward_output_dense")
        self._feedforward_output_dense.build(
            decoder_sequence_shape[:-1] + (self.intermediate_dim,)
        )
        self._feedforward_layernorm = MistralLayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="feedforward_layernorm",
        )
        self._feedforward_layernorm.build(decoder_sequence_shape)
        self.built = True

    def call(
        self,
        decoder_sequence,
        decoder_padding_mask=None,
        decoder_attention_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        training=None,
        rotary_embedding=None,
    ):
        """Runs the block.

        Args:
            decoder_sequence: `(batch, T, hidden_dim)` inputs.
            decoder_padding_mask: optional `(batch, key_length)` valid keys.
            decoder_attention_mask: optional `(batch, T, key_length)` mask
                that replaces the computed causal/window/padding mask.
            self_attention_cache: optional per-layer KV cache (see
                `CachedMistralAttention`).
            self_attention_cache_update_index: absolute position of the first
                token of `decoder_sequence`.
            training: bool, enables dropout.
            rotary_embedding: optional `(cos, sin)` RoPE tables of the
                positions of `decoder_sequence` (see
                `CachedMistralAttention.rotary_embedding`), so that a model
                computes them once for all its blocks.

        Returns:
            The block output, and the updated cache if one was given.
        """
        attention_mask = decoder_attention_mask
        if attention_mask is None:
            query_length = ops.shape(decoder_sequence)[1]
            key_length = (
                query_length
                if self_attention_cache is None
                else ops.shape(self_attention_cache)[2]
            )
            start_index = self_attention_cache_update_index
            attention_mask = compute_attention_mask(
                query_length,
                key_length,
                start_index=0 if start_index is None else start_index,
                sliding_window=self.sliding_window,
                padding_mask=decoder_padding_mask,
            )

        residual = decoder_sequence
        x = call_layer(self._self_attention_layernorm, decoder_sequence)
        x = call_layer(
            self._self_attention_layer,
            x,
            attention_mask=attention_mask,
            cache=self_attention_cache,
            cache_update_index=self_attention_cache_update_index,
            training=training,
            rotary_embedding=rotary_embedding,
        )
        if self_attention_cache is not None:
            x, self_attention_cache = x
        x = residual + x

        residual = x
        x = call_layer(self._feedforward_layernorm, x)
        gate = call_layer(self._feedforward_gate_dense, x)
        gate = ops.cast(self.activation(ops.cast(gate, "float32")), self.compute_dtype)
        x = call_layer(self._feedforward_intermediate_dense, x) * gate
        x = residual + call_layer(self._feedforward_output_dense, x)

        if self_attention_cache is not None:
            return x, self_attention_cache
        return x

    def compute_output_spec(self, decoder_sequence, **kwargs):
        output = keras.KerasTensor(decoder_sequence.shape, dtype=self.compute_dtype)
        cache = kwargs.get("self_attention_cache")
        if cache is not None:
            return output, keras.KerasTensor(cache.shape, dtype=cache.dtype)
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "rope_max_wavelength": self.rope_max_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "sliding_window": self.sliding_window,
                "dropout": self.dropout,
                "head_dim": self.head_dim,
            }
        )
        return config
