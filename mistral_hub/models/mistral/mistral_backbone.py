import keras

from mistral_hub.models.backbone import Backbone
from mistral_hub.models.mistral.mistral_layer_norm import MistralLayerNormalization
from mistral_hub.models.mistral.mistral_transformer_decoder import (
    MistralTransformerDecoder,
)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive int. Received: {name}={value!r}"
        )


def _check_positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )


def _validate_inputs(inputs):
    if not isinstance(inputs, dict) or set(inputs) != {"token_ids", "padding_mask"}:
        received = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise ValueError(
            "MistralBackbone expects a dict with keys `token_ids` and "
            f"`padding_mask`. Received: {received}"
        )
    shapes = {}
    for key, value in inputs.items():
        shape = tuple(value.shape)
        dtype = keras.backend.standardize_dtype(value.dtype)
        if len(shape) != 2:
            raise ValueError(
                f"`{key}` must have rank 2 (batch, sequence). Received shape {shape}."
            )
        if "int" not in dtype and dtype != "bool":
            raise ValueError(
                f"`{key}` must be an integer tensor. Received dtype {dtype}."
            )
        shapes[key] = shape
    if None not in shapes["token_ids"] + shapes["padding_mask"] and (
        shapes["token_ids"] != shapes["padding_mask"]
    ):
        raise ValueError(
            "`token_ids` and `padding_mask` must have the same shape. Received "
            f"{shapes['token_ids']} and {shapes['padding_mask']}."
        )


@keras.saving.register_keras_serializable(package="mistral_hub")
class MistralBackbone(Backbone):
    """The Mistral decoder-only transformer, outputting final hidden states.

    Token embedding, `num_layers` pre-norm decoder blocks (grouped-query
    attention with rotary embeddings and an optional sliding window, SwiGLU
    MLP) and a final RMSNorm. The output projection lives in
    `token_embedding` (an untied `keras.layers.ReversibleEmbedding`), so
    `backbone.token_embedding(hidden, reverse=True)` gives logits.

    The constructor matches `keras_hub.models.MistralBackbone`, and layer and
    attribute names match keras_hub's so that its `model.weights.h5` files
    load with `load_weights` directly.

    Args:
        vocabulary_size: int. Size of the token vocabulary.
        num_layers: int. Number of decoder blocks.
        num_query_heads: int. Number of attention query heads.
        hidden_dim: int. Width of the residual stream.
        intermediate_dim: int. Width of the MLP.
        num_key_value_heads: int. Number of key/value heads; must divide
            `num_query_heads`.
        rope_max_wavelength: float. RoPE base (`rope_theta`).
        rope_scaling_factor: float. Linear RoPE position scaling.
        layer_norm_epsilon: float. RMSNorm epsilon.
        sliding_window: int or None. A query at position `i` attends to keys
            `j` with `i - sliding_window < j <= i`; None attends to all past
            positions.
        head_dim: int or None. Defaults to `hidden_dim // num_query_heads`.
        dropout: float. Dropout rate on attention probabilities.
        dtype: None, a dtype name (e.g. `"bfloat16"`, `"mixed_bfloat16"`) or a
            `keras.DTypePolicy` for the computations and weights.
        **kwargs: `name` and `trainable`.

    Example:
    >>> import numpy as np
    >>> backbone = MistralBackbone(
    ...     vocabulary_size=100, num_layers=2, num_query_heads=4,
    ...     hidden_dim=32, intermediate_dim=64, num_key_value_heads=2,
    ...     sliding_window=8,
    ... )
    >>> hidden = backbone({
    ...     "token_ids": np.ones((1, 12), "int32"),
    ...     "padding_mask": np.ones((1, 12), "int32"),
    ... })
    >>> tuple(hidden.shape)
    (1, 12, 32)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_query_heads,
        hidden_dim,
        intermediate_dim,
        num_key_value_heads,
        rope_max_wavelength=10000,
        rope_scaling_factor=1.0,
        layer_norm_epsilon=1e-6,
        sliding_window=512,
        head_dim=None,
        dropout=0,
        dtype=None,
        **kwargs,
    ):
        for name, value in [
            ("vocabulary_size", vocabulary_size),
            ("num_layers", num_layers),
            ("num_query_heads", num_query_heads),
            ("hidden_dim", hidden_dim),
            ("intermediate_dim", intermediate_dim),
            ("num_key_value_heads", num_key_value_heads),
        ]:
            _check_positive_int(name, value)
        if num_query_heads % num_key_value_heads != 0:
            raise ValueError(
                "`num_query_heads` must be divisible by `num_key_value_heads`. "
                f"Received: num_query_heads={num_query_heads}, "
                f"num_key_value_heads={num_key_value_heads}"
            )
        if head_dim is not None:
            _check_positive_int("head_dim", head_dim)
        elif hidden_dim % num_query_heads != 0:
            raise ValueError(
                "Without `head_dim`, `hidden_dim` must be divisible by "
                f"`num_query_heads`. Received: hidden_dim={hidden_dim}, "
                f"num_query_heads={num_query_heads}"
            )
        resolved_head_dim = head_dim or hidden_dim // num_query_heads
        if resolved_head_dim % 2 != 0:
            raise ValueError(
                "Rotary embeddings need an even head size, but `head_dim` "
                f"resolves to {resolved_head_dim} (head_dim={head_dim}, "
                f"hidden_dim={hidden_dim}, num_query_heads={num_query_heads})."
            )
        if sliding_window is not None:
            _check_positive_int("sliding_window", sliding_window)
        _check_positive_number("rope_max_wavelength", rope_max_wavelength)
        _check_positive_number("rope_scaling_factor", rope_scaling_factor)
        _check_positive_number("layer_norm_epsilon", layer_norm_epsilon)
        if not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")

        # === Layers ===
        self.token_embedding = keras.layers.ReversibleEmbedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            tie_weights=False,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype=dtype,
            name="token_embedding",
        )
        self.transformer_layers = []
        for i in range(num_layers):
            self.transformer_layers.append(
                MistralTransformerDecoder(
                    intermediate_dim=intermediate_dim,
                    num_query_heads=num_query_heads,
                    num_key_value_heads=num_key_value_heads,
                    rope_max_wavelength=rope_max_wavelength,
                    rope_scaling_factor=rope_scaling_factor,
                    layer_norm_epsilon=layer_norm_epsilon,
                    activation="silu",
                    kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                    sliding_window=sliding_window,
                    dropout=dropout,
                    head_dim=head_dim,
                    dtype=dtype,
                    name=f"transformer_layer_{i}",
                )
            )
        self.layer_norm = MistralLayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=dtype,
            name="sequence_output_layernorm",
        )

        # === Functional model ===
        token_id_input = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask_input = keras.Input(
            shape=(None,), dtype="int32", name="padding_mask"
        )
        x = self.token_embedding(token_id_input)
        for transformer_layer in self.transformer_layers:
            x = transformer_layer(x, decoder_padding_mask=padding_mask_input)
        sequence_output = self.layer_norm(x)
        super().__init__(
            inputs={"token_ids": token_id_input, "padding_mask": padding_mask_input},
            outputs=sequence_output,
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_query_heads = num_query_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_key_value_heads = num_key_value_heads
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.layer_norm_epsilon = layer_norm_epsilon
        self.sliding_window = sliding_window
        self.head_dim = head_dim
        self.dropout = dropout

    def call(self, inputs, training=None, mask=None):
        _validate_inputs(inputs)
        return super().call(inputs, training=training, mask=mask)

    @property
    def resolved_head_dim(self):
        """The head size actually used: `head_dim` or `hidden_dim // heads`."""
        return self.head_dim or self.hidden_dim // self.num_query_heads

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "num_query_heads": self.num_query_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "rope_max_wavelength": self.rope_max_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                "num_key_value_heads": self.num_key_value_heads,
                "sliding_window": self.sliding_window,
                "head_dim": self.head_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
            }
        )
        return config
