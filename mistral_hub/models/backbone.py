import keras

from mistral_hub.models.functional_model import FunctionalModel
from mistral_hub.utils import preset_utils


class Backbone(FunctionalModel):
    """Base class for functional backbones: dtype handling and config.

    A backbone maps preprocessed inputs to hidden states. Subclasses build a
    functional graph in `__init__` and pass `dtype` through here so that the
    model-level policy matches the one given to every sublayer.

    Loading and saving presets (`from_preset`, `save_to_preset`) are provided
    by `mistral_hub.utils.preset_utils` on top of this class.
    """

    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._initialized = True
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)

    @property
    def token_embedding(self):
        """The `keras.layers.ReversibleEmbedding` mapping ids to vectors."""
        return getattr(self, "_token_embedding", None)

    @token_embedding.setter
    def token_embedding(self, value):
        self._token_embedding = value

    def get_config(self):
        dtype = self.dtype_policy
        if not isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
            quantized = keras.dtype_policies.DTypePolicyMap()
            for layer in self._flatten_layers():
                if layer.quantization_mode is not None:
                    quantized[layer.path] = layer.dtype_policy
            if len(quantized) > 0:
                dtype = quantized
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(dtype),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    # --- presets (implemented in mistral_hub.utils.preset_utils) ----------

    @preset_utils.classproperty
    def presets(cls):
        """Built-in presets of this class: name -> metadata and handle."""
        return preset_utils.builtin_presets(cls)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
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
            **kwargs: config overrides, e.g. `dtype="bfloat16"`. Without
                `dtype`, the saved (or checkpoint) dtype is kept.

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
        return preset_utils.backbone_from_preset(cls, preset, load_weights, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10, overwrite=False):
        """Saves `config.json`, `metadata.json` and the weights atomically.

        Args:
            preset_dir: str or path. Adds to an existing Keras preset there.
            max_shard_size: float. Shard the weights above this many GB.
            overwrite: bool. Needed to replace a non-empty directory that is
                not a Keras preset.
        """
        preset_utils.save_backbone(self, preset_dir, max_shard_size, overwrite)

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
        if not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"`rank` must be a positive int. Received: rank={rank}")
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
        if not found:
            raise ValueError(
                "No layer matched `target_layer_names`="
                f"{target_layer_names}; nothing to adapt."
            )
