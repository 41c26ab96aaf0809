import inspect

import keras

from mistral_hub.layers.reversible_embedding import ReversibleEmbedding
from mistral_hub.models.backbone import Backbone
from mistral_hub.models.mistral.mistral_layer_norm import MistralLayerNormalization
from mistral_hub.models.mistral.mistral_transformer_decoder import (
    MistralTransformerDecoder,
)
from mistral_hub.utils import validation

# Keyword arguments `**kwargs` passes on to `keras.Model`; Keras' functional
# constructor silently drops any other, so a misspelled argument is refused.
_MODEL_KWARGS = ("name", "trainable")


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
    `token_embedding` (an untied `ReversibleEmbedding`), so
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

    Sizes must be positive ints (numpy ints are accepted), the RoPE values
    and the epsilon finite numbers above 0, `dropout` in `[0, 1)`: anything
    else raises a `ValueError` naming the argument, before any layer is
    built. Any other keyword argument (e.g. a misspelled `sliding_windw`) is
    a `TypeError`.

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
        validation.check_known_kwargs(
            type(self).__name__,
            kwargs,
            {*_MODEL_KWARGS, *inspect.signature(MistralBackbone.__init__).parameters}
            - {"self", "kwargs"},
        )
        vocabulary_size = validation.check_positive_int("vocabulary_size", vocabulary_size)
        num_layers = validation.check_positive_int("num_layers", num_layers)
        num_query_heads = validation.check_positive_int("num_query_heads", num_query_heads)
        hidden_dim = validation.check_positive_int("hidden_dim", hidden_dim)
        intermediate_dim = validation.check_positive_int("intermediate_dim", intermediate_dim)
        num_key_value_heads = validation.check_positive_int(
            "num_key_value_heads", num_key_value_heads
        )
        head_dim = validation.check_positive_int("head_dim", head_dim, allow_none=True)
        sliding_window = validation.check_positive_int(
            "sliding_window", sliding_window, allow_none=True
        )
        rope_max_wavelength = validation.check_positive_float(
            "rope_max_wavelength", rope_max_wavelength
        )
        rope_scaling_factor = validation.check_positive_float(
            "rope_scaling_factor", rope_scaling_factor
        )
        layer_norm_epsilon = validation.check_positive_float(
            "layer_norm_epsilon", layer_norm_epsilon
        )
        dropout = validation.check_finite_float("dropout", dropout, 0, 1, include_high=False)
        if num_query_heads % num_key_value_heads != 0:
            raise ValueError(
                "`num_query_heads` must be divisible by `num_key_value_heads`. "
                f"Received: num_query_heads={num_query_heads}, "
                f"num_key_value_heads={num_key_value_heads}"
            )
        if head_dim is None and hidden_dim % num_query_heads != 0:
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

        # === Layers ===
        self.token_embedding = ReversibleEmbedding(
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

    @staticmethod
    def get_layout_map(
        device_mesh,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
    ):
        """Returns a `keras.distribution.LayoutMap` that shards the weights.

        Megatron-style tensor parallelism on the model axis: attention is
        split by heads (query/key/value kernels on their head axis, the
        output projection on its input heads), the MLP by its intermediate
        units (gate/up on their output, down on its input), and the
        embeddings by vocabulary, so each device computes its own heads and
        units and only the attention and MLP outputs are summed across the
        model axis. On the data axis, every sharded weight is also split
        along its other large dimension (hidden size, or head size for the
        attention output), FSDP-style, so the replicas of a data-parallel
        mesh share the weight memory as well. Norm scales are replicated.

        The same entries cover LoRA adapters (`lora_kernel_a` is split like
        the kernel's input axes, `lora_kernel_b` like its output axis) and
        quantized kernels (`int8`, `float8`, and `int4`, which Keras stores
        as a 2-D packed array under the same path, which is why every entry
        names leading axes only). Quantization scales, zero points and
        float8 histories are small and stay replicated.

        Each sharded dimension must be divisible by its mesh axis: the
        model axis must divide `num_key_value_heads`, `num_query_heads`,
        `intermediate_dim` and `vocabulary_size`; the data axis must divide
        `hidden_dim` and the head size. For Mistral 7B (8 key/value heads)
        the model axis can have 1, 2, 4 or 8 devices.

        Use with `keras.distribution.ModelParallel` (set before the model is
        built, so that each weight is created on its devices);
        `keras.distribution.DataParallel` needs no layout map. `fit()` and
        `generate()` run under both. Only the JAX backend implements the
        Keras distribution API.

        Several hosts run the same script: call
        `keras.distribution.initialize()` first on every host (with
        `KERAS_DISTRIBUTION_JOB_ADDRESSES` set to the coordinator's
        `host:port`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and
        `KERAS_DISTRIBUTION_PROCESS_ID`, or the matching arguments), then
        build the mesh from `keras.distribution.list_devices()`, which
        lists the devices of all hosts. Each host feeds its own slice of
        every batch: pass a `tf.data.Dataset` to shard it automatically, or
        `auto_shard_dataset=False` and per-host arrays. See
        `examples/model_parallel.py`.

        Args:
            device_mesh: `keras.distribution.DeviceMesh`. Must have both
                axes named below.
            model_parallel_dim_name: str. The mesh axis that splits heads,
                MLP units and the vocabulary.
            data_parallel_dim_name: str. The mesh axis the batch is split
                on (the `batch_dim_name` of `ModelParallel`).

        Returns:
            A `keras.distribution.LayoutMap`.

        Raises:
            TypeError: if `device_mesh` is not a `DeviceMesh`.
            ValueError: if an axis name is not in the mesh, or both name the
                same axis.

        Example:
        >>> import keras
        >>> devices = keras.distribution.list_devices()
        >>> mesh = keras.distribution.DeviceMesh(
        ...     (1, len(devices)), ("batch", "model"), devices)
        >>> layout_map = MistralBackbone.get_layout_map(mesh)
        >>> layout_map["transformer_layer_0/self_attention/query/kernel"].axes
        ('batch', 'model')
        >>> distribution = keras.distribution.ModelParallel(
        ...     layout_map=layout_map, batch_dim_name="batch")
        >>> with distribution.scope():
        ...     backbone = MistralBackbone(vocabulary_size=64, num_layers=1,
        ...         num_query_heads=4, hidden_dim=16, intermediate_dim=32,
        ...         num_key_value_heads=2)
        """
        if not isinstance(device_mesh, keras.distribution.DeviceMesh):
            raise TypeError(
                "`device_mesh` must be a `keras.distribution.DeviceMesh`. "
                f"Received: device_mesh={device_mesh!r} "
                f"(of type {type(device_mesh).__name__})"
            )
        for argument, name in (
            ("model_parallel_dim_name", model_parallel_dim_name),
            ("data_parallel_dim_name", data_parallel_dim_name),
        ):
            if name not in device_mesh.axis_names:
                raise ValueError(
                    f"`{argument}` must be one of the mesh axis names "
                    f"{list(device_mesh.axis_names)}. Received: {argument}={name!r}"
                )
        if model_parallel_dim_name == data_parallel_dim_name:
            raise ValueError(
                "`model_parallel_dim_name` and `data_parallel_dim_name` must "
                f"name different mesh axes. Both are {model_parallel_dim_name!r}."
            )
        model, data = model_parallel_dim_name, data_parallel_dim_name
        layout_map = keras.distribution.LayoutMap(device_mesh)
        # (vocabulary, hidden) and (hidden, vocabulary): the logits come out
        # split by vocabulary on the model axis.
        layout_map["token_embedding/embeddings"] = (model, data)
        layout_map["token_embedding/reverse_embeddings"] = (data, model)
        block = r"transformer_layer_\d+"
        kernels = {
            # (hidden, heads, head_dim)
            rf"{block}/self_attention/(query|key|value)": (data, model, None),
            # (heads, head_dim, hidden)
            rf"{block}/self_attention/attention_output": (model, data, None),
            # (hidden, intermediate)
            rf"{block}/feedforward_(intermediate|gate)_dense": (data, model),
            # (intermediate, hidden)
            rf"{block}/feedforward_output_dense": (model, data),
        }
        for layer, axes in kernels.items():
            # `lora_kernel_a` has the kernel's input axes then the rank,
            # `lora_kernel_b` the rank then the kernel's last axis.
            for variable, variable_axes in (
                ("kernel", axes),
                ("lora_kernel_a", axes[:-1]),
                ("lora_kernel_b", (None, axes[-1])),
            ):
                variable_axes = _leading_axes(variable_axes)
                if variable_axes:
                    layout_map[f"{layer}/{variable}"] = variable_axes
        return layout_map


def _leading_axes(axes):
    # JAX replicates the axes a spec leaves out; writing only up to the last
    # sharded axis lets one entry fit the float kernel and its 2-D int4 form.
    axes = tuple(axes)
    while axes and axes[-1] is None:
        axes = axes[:-1]
    return axes
