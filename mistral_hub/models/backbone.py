import keras
from keras.src.backend.common import global_state

from mistral_hub.layers.variable_deletion import collect_garbage_after
from mistral_hub.models.functional_model import FunctionalModel
from mistral_hub.utils import dtype_utils
from mistral_hub.utils import validation
from mistral_hub.utils.adapters import keras_hub_lora
from mistral_hub.utils.presets import backbone_from_preset
from mistral_hub.utils.presets import builtin_presets
from mistral_hub.utils.presets import save_backbone
from mistral_hub.utils.python_utils import classproperty


class Backbone(FunctionalModel):
    """Base class for functional backbones: dtype handling and config.

    A backbone maps preprocessed inputs to hidden states. Subclasses build a
    functional graph in `__init__` and pass `dtype` through here so that the
    model-level policy matches the one given to every sublayer.

    Loading and saving presets (`from_preset`, `save_to_preset`) are provided
    by `mistral_hub.utils.presets` on top of this class.
    """

    # What the preset code builds and saves this as (no isinstance there).
    preset_kind = "backbone"

    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._initialized = True
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)
        _match_int4_reverse_embedding_inputs(self)

    @property
    def token_embedding(self):
        """The `keras.layers.ReversibleEmbedding` mapping ids to vectors."""
        return getattr(self, "_token_embedding", None)

    @token_embedding.setter
    def token_embedding(self, value):
        self._token_embedding = value

    def __call__(self, inputs, *args, **kwargs):
        # Concrete ids entering the library here are range-checked (ids out
        # of range give NaN on JAX and raw errors elsewhere). Only for a
        # call from outside any layer: inside a task's forward pass the task
        # checked its inputs, and a per-step check would cost a host sync.
        if (
            global_state.get_global_attribute("current_call_ctx") is None
            and isinstance(inputs, dict)
            and "token_ids" in inputs
        ):
            validation.check_token_inputs(None, inputs, self.token_embedding.input_dim)
        return super().__call__(inputs, *args, **kwargs)

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Quantizes the weights, as `keras.Model.quantize` does.

        The calibrated modes (`"gptq"`, `"awq"`) run the token embedding,
        then quantize the transformer layers one after the other (see
        `get_quantization_layer_structure`), so the backbone quantizes
        alone as well as inside its task.

        Args:
            mode: str. `"int8"`, `"int4"`, `"float8"`, `"gptq"` or `"awq"`;
                optional when `config` gives it.
            config: `keras.quantizers.QuantizationConfig`, e.g. a
                `keras.quantizers.GPTQConfig` with its calibration set.
            filters: regex string, list of them or callable selecting the
                layers to quantize.
            **kwargs: passed to `keras.Model.quantize`.

        Raises:
            ValueError: for `"gptq"` on 16-bit weights, which Keras' GPTQ
                cannot quantize, before any layer is changed.

        Example:
        >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
        >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=1,
        ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
        ...     num_key_value_heads=1)
        >>> backbone.quantize("int8")
        >>> backbone.transformer_layers[0]._feedforward_gate_dense.quantization_mode
        'int8'
        """
        self._check_quantizable(mode, config)
        # The layers delete their float kernels without collecting each time.
        with collect_garbage_after():
            super().quantize(mode, config=config, filters=filters, **kwargs)

    def _check_quantizable(self, mode, config):
        """Refuses what Keras would fail on midway, leaving layers changed."""
        mode = mode or getattr(config, "mode", None)
        if mode != "gptq":
            return
        # Keras' GPTQ (3.15) mixes the float32 Hessian with the kernel's
        # own dtype and fails in a backend op after earlier layers were
        # already converted.
        dtypes = sorted({v.dtype for v in self.weights if v.dtype in ("bfloat16", "float16")})
        if dtypes:
            raise ValueError(
                "`quantize('gptq')` needs float32 weights: Keras' GPTQ cannot "
                f"quantize {', '.join(dtypes)} kernels. Received a model with "
                f"{', '.join(dtypes)} weights; load it with `dtype=\"float32\"` "
                "(e.g. `from_preset(..., dtype=\"float32\")`) before quantizing."
            )

    def get_quantization_layer_structure(self, mode):
        """The layer structure Keras' GPTQ and AWQ quantizers walk.

        Args:
            mode: str. The quantization mode.

        Returns:
            For `"gptq"` and `"awq"`, a dict with `"pre_block_layers"` (the
            token embedding) and `"sequential_blocks"` (the transformer
            layers); None for other modes, which need no structure.

        Example:
        >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
        >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=2,
        ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
        ...     num_key_value_heads=1)
        >>> len(backbone.get_quantization_layer_structure("awq")["sequential_blocks"])
        2
        """
        if mode not in ("gptq", "awq"):
            return None
        return {
            "pre_block_layers": [self.token_embedding],
            "sequential_blocks": list(self.transformer_layers),
        }

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self._dtype_policy_to_save()),
        }

    def _dtype_policy_to_save(self):
        """The backbone's policy, as a `DTypePolicyMap` once quantized.

        The map's default is the backbone's own (float) policy, never left
        unset: Keras would then fill it from the global policy when loading
        (float32 by default), changing the non-quantized layers' dtypes, and
        its `get_config` would also erase the source dtype of the live
        quantized layers' policies. The map holds copies of those policies
        for the same reason.
        """
        default = dtype_utils.layer_policy(self)
        quantized = {}
        for layer in self._flatten_layers(include_self=False):
            policy = dtype_utils.layer_policy(layer)
            if policy.quantization_mode is not None:
                quantized[layer.path] = keras.dtype_policies.deserialize(
                    keras.dtype_policies.serialize(policy)
                )
        if not quantized:
            return default
        return keras.dtype_policies.DTypePolicyMap(
            default_policy=default.name, policy_map=quantized
        )

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    # --- presets (implemented in mistral_hub.utils.presets) ----------

    @classproperty
    def presets(cls):
        """Built-in presets of this class: name -> metadata and handle."""
        return builtin_presets(cls)

    @classmethod
    def from_preset(cls, preset, load_weights=True, strict=True, **kwargs):
        """Builds a backbone from a preset.

        `preset` is a built-in name (see `presets`), a
        `kaggle://owner/model/framework/variation[/version]` or
        `hf://owner/repo[@revision]` handle, or a local directory, holding a
        Keras preset (keras_hub's format), a transformers checkpoint or a
        Mistral (`params.json`) checkpoint. Called on `Backbone`, the class
        is read from the preset.

        Args:
            preset: str or path. The preset.
            load_weights: bool. If False, weights are randomly initialized.
            strict: bool. If True (default), the weights must match the
                model built from the config exactly: every weight present
                with its shape and a float dtype, nothing left over, else a
                `ValueError` lists the differences and nothing loads. If
                False, the matching weights load, a warning lists the
                others, and those keep their random initial values.
            **kwargs: config overrides, e.g. `dtype="bfloat16"`. Without
                `dtype`, a global policy set with
                `keras.config.set_dtype_policy()` (other than the default
                `"float32"`) is used, else the saved (or checkpoint) dtype
                is kept, e.g. bfloat16 for inference; `fit()` then trains
                in `"mixed_bfloat16"` (see `CausalLM.compile`). An unknown
                name is a `TypeError`.

        Example:
        >>> import tempfile
        >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
        >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=1,
        ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
        ...     num_key_value_heads=1)
        >>> preset = tempfile.mkdtemp() + "/tiny"
        >>> backbone.save_to_preset(preset)
        >>> Backbone.from_preset(preset, dtype="bfloat16").dtype_policy.name
        'bfloat16'
        """
        return backbone_from_preset(cls, preset, load_weights, strict, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10, overwrite=False):
        """Saves `config.json`, `metadata.json` and the weights atomically.

        Args:
            preset_dir: str or path. Adds to an existing Keras preset there
                (e.g. one holding the tokenizer); through a symbolic link,
                the directory it points to is written.
            max_shard_size: float (GB) or a size string like `"5GB"`;
                weights larger than this are sharded.
            overwrite: bool. Needed to replace a non-empty directory that is
                not a Keras preset, or a task preset (`task.json`) that a
                backbone alone would leave inconsistent; the directory then
                holds just this backbone.
        """
        save_backbone(self, preset_dir, max_shard_size, overwrite)

    def export_to_transformers(self, path, max_shard_size="5GB", overwrite=False):
        """Writes `config.json` and safetensors weights for transformers."""
        from mistral_hub.utils.transformers.export import export_to_transformers

        export_to_transformers(self, path, max_shard_size=max_shard_size, overwrite=overwrite)

    def default_lora_layer_names(self):
        """Names of the layers `enable_lora` targets by default."""
        return ["query", "value"]

    def enable_lora(self, rank, target_layer_names=None):
        """Freezes the backbone and adds rank-`rank` LoRA adapters.

        Args:
            rank: int. Rank of the low-rank update.
            target_layer_names: list of layer names to adapt; defaults to
                `default_lora_layer_names()` (the query and value projections).
        """
        rank = validation.check_positive_int("rank", rank)
        target_layer_names = target_layer_names or self.default_lora_layer_names()
        self.trainable = True
        found = False
        # Only leaves are frozen: Keras hides every weight of a non-trainable
        # parent, which would also hide the adapters added below.
        for layer in self._flatten_layers(include_self=False):
            if not list(layer._flatten_layers(include_self=False, recursive=False)):
                layer.trainable = False
        for layer in self._flatten_layers(include_self=False):
            if layer.name in target_layer_names and hasattr(layer, "enable_lora"):
                layer.trainable = True
                layer.enable_lora(rank)
                found = True
                if layer.quantization_mode is not None:
                    # Keras' quantized call multiplies the 16-bit inputs by
                    # the float32 adapters without a cast, which torch
                    # refuses; under the mixed policy (float32 variables,
                    # 16-bit compute) the adapters are read in 16 bits.
                    policy = dtype_utils.mixed_policy(dtype_utils.layer_policy(layer))
                    if policy is not None:
                        layer.dtype_policy = policy
        if not found:
            raise ValueError(
                "No layer matched `target_layer_names`="
                f"{target_layer_names}; nothing to adapt."
            )

    def merge_lora(self):
        """Folds the LoRA adapters into the weights and removes them.

        Each adapted kernel (or embedding matrix) `W` becomes
        `W + (lora_alpha / rank) * lora_kernel_a @ lora_kernel_b`, the same
        sum Keras computes in the layer's forward pass (in float32, then
        cast to the weight's dtype), and the adapter variables are deleted.
        The backbone is then a plain model again: `save_to_preset` and
        `export_to_transformers` write plain weights, inference skips the
        adapter matmuls, and `enable_lora` can add new adapters. int8 and
        int4 weights are dequantized, merged and requantized, as Keras does
        when it saves a quantized layer with adapters, so the merged model
        matches the adapted one within quantization error only.

        Afterwards every weight is trainable again, as in a freshly built
        backbone; compile a task again before training it further.

        Raises:
            ValueError: if no layer has LoRA adapters, or one is quantized
                in a mode Keras cannot merge into (nothing is changed then).

        Example:
        >>> import numpy as np
        >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
        >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=1,
        ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
        ...     num_key_value_heads=1)
        >>> backbone.enable_lora(rank=2)
        >>> for variable in backbone.trainable_weights:
        ...     _ = variable.assign(np.full(variable.shape, 0.1, "float32"))
        >>> inputs = {"token_ids": np.array([[1, 2, 3]]),
        ...     "padding_mask": np.array([[1, 1, 1]])}
        >>> adapted = backbone(inputs)
        >>> backbone.merge_lora()
        >>> [w.path for w in backbone.weights if "lora" in w.path]
        []
        >>> bool(np.allclose(backbone(inputs), adapted, atol=1e-6))
        True
        """
        adapted = [
            layer
            for layer in self._flatten_layers(include_self=False)
            if getattr(layer, "lora_enabled", False)
        ]
        if not adapted:
            raise ValueError(
                "This backbone has no LoRA adapters to merge. Call "
                "`enable_lora(rank)` (and train) first."
            )
        # Every merged value is computed before any variable changes, so an
        # unsupported layer leaves the model untouched.
        updates = [(layer, _merged_lora_values(layer)) for layer in adapted]
        for layer, values in updates:
            for variable, value in values:
                variable.assign(value)
            for name in _lora_variable_names(layer):
                # Keras' `__delattr__` would also run `gc.collect()`, about a
                # second each time in a big process; refcounting frees them.
                layer._untrack_variable(getattr(layer, name))
                super(keras.layers.Layer, layer).__delattr__(name)
            layer.lora_enabled = False
            layer.lora_rank = None
            layer.lora_alpha = None
        # On TensorFlow, assigning a layer the `trainable` value it already
        # has is skipped (also for sublayers), so the frozen leaves and
        # kernels would stay frozen: switch everything off, then on.
        self.trainable = False
        self.trainable = True

    def save_lora_weights(self, filepath):
        """Saves the LoRA adapters in keras_hub's `.lora.h5` format.

        The file holds `lora/vars/rank` and, for every adapted layer,
        `lora/<index>/vars/lora_kernel_a` and `lora_kernel_b`, where
        `<index>` counts the backbone's sublayers that have weights in
        flattening order. keras_hub's `load_lora_weights` reads it, and
        `load_lora_weights` here reads keras_hub's files. The format has no
        `lora_alpha`: an adapter whose alpha is not its rank is stored with
        `alpha / rank` folded into `lora_kernel_b`, so it reloads with the
        same output. The file is
        written next to `filepath` and moved into place, so a failed save
        never leaves a partial file.

        Args:
            filepath: str or path ending in `.lora.h5`.

        Raises:
            ValueError: if `filepath` does not end in `.lora.h5`, if no
                layer has LoRA enabled, or if the adapters differ in rank.

        Example:
        >>> import tempfile
        >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
        >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=1,
        ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
        ...     num_key_value_heads=1)
        >>> backbone.enable_lora(rank=2)
        >>> path = tempfile.mkdtemp() + "/adapters.lora.h5"
        >>> backbone.save_lora_weights(path)
        >>> fresh = MistralBackbone.from_config(backbone.get_config())
        >>> fresh.load_lora_weights(path)
        >>> sum(layer.lora_enabled for layer in fresh._flatten_layers()
        ...     if hasattr(layer, "lora_enabled"))
        2
        """
        keras_hub_lora.save_lora_weights(self, filepath)

    def load_lora_weights(self, filepath):
        """Loads LoRA adapters saved by `save_lora_weights` (or keras_hub's).

        Without LoRA enabled, it is enabled first with the file's rank on
        the layers the file adapts. Everything is checked before any
        variable changes, so a mismatching file leaves the model as it was.

        Args:
            filepath: str or path of a `.lora.h5` file.

        Raises:
            ValueError: if the file is not a LoRA weights file, if its rank
                differs from the rank of the enabled adapters, or if it
                adapts other layers or shapes than this backbone.
        """
        keras_hub_lora.load_lora_weights(self, filepath)


def _match_int4_reverse_embedding_inputs(model):
    """Builds int4 reverse embeddings as `quantize("int4")` leaves them.

    `quantize("int4")` uses `Int4QuantizationConfig`, whose default is
    weight-only (no input quantizer), but a `ReversibleEmbedding` built from
    an int4 policy without a config (a saved model being loaded) quantizes
    the inputs of its reverse projection, so reloaded logits would differ.
    """
    for layer in model._flatten_layers(include_self=False):
        if (
            isinstance(layer, keras.layers.ReversibleEmbedding)
            and layer.quantization_mode == "int4"
            and getattr(layer, "quantization_config", None) is None
        ):
            layer.inputs_quantizer = None


def _lora_variable_names(layer):
    weight = _adapted_weight(layer)
    return (f"lora_{weight}_a", f"lora_{weight}_b")


def _adapted_weight(layer):
    # Dense and EinsumDense adapt `kernel`; Embedding adapts `embeddings`.
    return "kernel" if hasattr(layer, "lora_kernel_a") else "embeddings"


def _merged_lora_values(layer):
    """`[(variable, merged value)]` for one adapted layer."""
    lora_a, lora_b = (getattr(layer, name) for name in _lora_variable_names(layer))
    kernel = _adapted_weight(layer)
    mode = layer.quantization_mode
    if mode is None:
        base = getattr(layer, f"_{kernel}")
        update = (layer.lora_alpha / layer.lora_rank) * keras.ops.matmul(lora_a, lora_b)
        merged = keras.ops.add(keras.ops.cast(base, "float32"), update)
        return [(base, keras.ops.cast(merged, base.dtype))]
    if mode in ("int8", "int4"):
        # Keras' own dequantize-merge-requantize, the one `save_own_variables`
        # writes for a quantized layer with adapters.
        value, scale, zero = getattr(layer, f"_get_{kernel}_with_merged_lora")()
        values = [(getattr(layer, f"_{kernel}"), value), (getattr(layer, f"{kernel}_scale"), scale)]
        if zero is not None:
            values.append((getattr(layer, f"{kernel}_zero"), zero))
        return values
    raise ValueError(
        f"Cannot merge the LoRA adapters of layer `{layer.path}`: Keras merges "
        f"adapters into float, int8 and int4 weights, not {mode!r} ones."
    )
