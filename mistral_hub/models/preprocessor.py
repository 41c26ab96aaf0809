import keras

from mistral_hub.utils.presets import builtin_presets
from mistral_hub.utils.presets import load_tokenizer_assets
from mistral_hub.utils.presets import preprocessor_from_preset
from mistral_hub.utils.presets import save_preprocessor
from mistral_hub.utils.python_utils import classproperty


class Preprocessor(keras.layers.Layer):
    """Base class for preprocessors: owns a tokenizer and serializes it.

    Preset loading and saving (`from_preset`, `save_to_preset`) are added on
    top of this class by `mistral_hub.utils.presets`.
    """

    # What the preset code builds and saves this as (no isinstance there).
    preset_kind = "preprocessor"
    tokenizer_cls = None

    def __init__(self, tokenizer=None, config_file="preprocessor.json", **kwargs):
        super().__init__(**kwargs)
        # Preprocessors take raw strings and numpy arrays, not tensors.
        self._allow_non_tensor_positional_args = True
        self._convert_input_args = False
        self.built = True
        self.tokenizer = tokenizer
        self.config_file = config_file

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "config_file": self.config_file,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("tokenizer"), dict):
            config["tokenizer"] = keras.saving.deserialize_keras_object(
                config["tokenizer"]
            )
        return cls(**config)

    # --- presets (implemented in mistral_hub.utils.presets) ----------

    @classproperty
    def presets(cls):
        """Built-in presets of this class: name -> metadata and handle."""
        return builtin_presets(cls)

    @classmethod
    def from_preset(cls, preset, config_file="preprocessor.json", **kwargs):
        """Builds the preprocessor (and its tokenizer) from a preset.

        Without `config_file` in the preset (e.g. a transformers
        checkpoint), the preprocessor gets default settings around the
        preset's tokenizer.

        Args:
            preset: str or path. See `Backbone.from_preset`.
            config_file: str. The preprocessor config file in the preset.
            **kwargs: overrides, e.g. `sequence_length=128`; tokenizer
                arguments go to the tokenizer.

        Example:
        >>> import tempfile
        >>> from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
        >>> from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
        ...     MistralCausalLMPreprocessor)
        >>> preprocessor = MistralCausalLMPreprocessor(
        ...     MistralTokenizer.from_preset("mistral_hub_demo"), sequence_length=8)
        >>> preset = tempfile.mkdtemp() + "/tiny"
        >>> preprocessor.save_to_preset(preset)
        >>> MistralCausalLMPreprocessor.from_preset(
        ...     preset, sequence_length=4).sequence_length
        4
        """
        return preprocessor_from_preset(cls, preset, config_file, **kwargs)

    def save_to_preset(self, preset_dir, overwrite=False):
        """Saves the preprocessor and its tokenizer (with assets) atomically.

        Args:
            preset_dir: str or path. Adds to an existing Keras preset there
                (e.g. next to a saved backbone, as keras_hub does).
            overwrite: bool. Needed to write into a non-empty directory that
                is not a Keras preset, or into a task preset (`task.json`),
                which this part alone would leave inconsistent; the
                directory is then replaced by what is written.
        """
        save_preprocessor(self, preset_dir, overwrite)

    def load_preset_assets(self, preset):
        """Loads the tokenizer's vocabulary files from `preset`."""
        if self.tokenizer is not None:
            self.tokenizer = load_tokenizer_assets(self.tokenizer, preset)
