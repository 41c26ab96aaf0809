import sys

import keras

from mistral_hub.models.functional_model import FunctionalModel
from mistral_hub.utils import preset_utils


class Task(FunctionalModel):
    """Base class for end-to-end models: a backbone, a head and a preprocessor.

    `fit`, `evaluate` and `predict` run the attached preprocessor on raw
    inputs. Python and numpy inputs are preprocessed once in Python, so
    fine-tuning on JAX or torch needs no TensorFlow; a `tf.data.Dataset` is
    mapped through the preprocessor instead.

    Preset loading and saving are added by `mistral_hub.utils.preset_utils`.
    """

    backbone_cls = None
    preprocessor_cls = None

    def __init__(self, *args, compile=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._functional_layer_ids = set(id(layer) for layer in self._flatten_layers())
        self._initialized = True
        if self.backbone is not None:
            self.dtype_policy = self._backbone.dtype_policy
        if compile:
            self.compile()

    @property
    def backbone(self):
        """The backbone model."""
        return getattr(self, "_backbone", None)

    @backbone.setter
    def backbone(self, value):
        self._backbone = value

    @property
    def preprocessor(self):
        """The preprocessor, or None to feed preprocessed tensors."""
        return getattr(self, "_preprocessor", None)

    @preprocessor.setter
    def preprocessor(self, value):
        self._preprocessor = value

    @property
    def layers(self):
        # The preprocessor is not part of the graph; hide it like keras_hub.
        return [
            layer for layer in super().layers if layer is not self.preprocessor
        ]

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "preprocessor"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    # --- presets (implemented in mistral_hub.utils.preset_utils) ----------

    @preset_utils.classproperty
    def presets(cls):
        """Built-in presets of this class: name -> metadata and handle."""
        return preset_utils.builtin_presets(cls)

    @classmethod
    def from_preset(cls, preset, load_weights=True, strict=True, **kwargs):
        """Builds the task (backbone and preprocessor) from a preset.

        See `Backbone.from_preset` for the accepted presets. Called on a
        base class such as `CausalLM`, the concrete class is chosen from
        the preset's backbone. A transformers checkpoint's
        `generation_config.json` stop ids become `default_stop_token_ids`.

        Args:
            preset: str or path. The preset.
            load_weights: bool. If False, weights are randomly initialized.
            strict: bool. If True (default), the weights must match the
                backbone exactly and the stop ids of the preset must be
                valid, else a `ValueError` says what differs (see
                `Backbone.from_preset`). If False, what matches loads and a
                warning lists the rest.
            **kwargs: overrides routed by name: backbone config values and
                `dtype` to the backbone, `sequence_length` and other
                preprocessor arguments to the preprocessor, tokenizer
                arguments to the tokenizer, `compile`, `name`, `backbone=`
                and `preprocessor=` to the task. Any other name is a
                `TypeError`.

        Example:
        >>> import tempfile
        >>> from mistral_hub.models.causal_lm import CausalLM
        >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
        >>> from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
        >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=1,
        ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
        ...     num_key_value_heads=1)
        >>> preset = tempfile.mkdtemp() + "/tiny"
        >>> MistralCausalLM(backbone).save_to_preset(preset)
        >>> type(CausalLM.from_preset(preset)).__name__
        'MistralCausalLM'
        """
        return preset_utils.task_from_preset(cls, preset, load_weights, strict, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10, overwrite=False):
        """Saves `task.json`, the backbone and the preprocessor atomically.

        Args:
            preset_dir: str or path. Adds to an existing Keras preset there.
            max_shard_size: float. Shard the weights above this many GB.
            overwrite: bool. Needed to replace a non-empty directory that is
                not a Keras preset.
        """
        preset_utils.save_task(self, preset_dir, max_shard_size, overwrite)

    def export_to_transformers(self, path, max_shard_size="5GB", overwrite=False):
        """Writes model, tokenizer and generation config for transformers."""
        from mistral_hub.utils.transformers.export import export_to_transformers

        export_to_transformers(self, path, max_shard_size=max_shard_size, overwrite=overwrite)

    # --- preprocessing in fit / evaluate / predict ------------------------

    def _preprocess(self, x, y=None, sample_weight=None):
        """Preprocesses raw `x` into `(x, y, sample_weight)` for Keras."""
        if self.preprocessor is None or x is None:
            return x, y, sample_weight
        if _is_tf_dataset(x):
            import tensorflow as tf

            def preprocess(*sample):
                return self.preprocessor(*sample)

            x = x.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
            return x.prefetch(tf.data.AUTOTUNE), None, None
        return self.preprocessor(x, y, sample_weight)

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None, validation_data=None, **kwargs):
        if not self.compiled:
            raise ValueError("You must call `compile()` before calling `fit()`.")
        x, y, sample_weight = self._preprocess(x, y, sample_weight)
        if validation_data is not None and not _is_tf_dataset(validation_data):
            validation_data = self._preprocess(*_unpack(validation_data))
        elif validation_data is not None:
            validation_data = self._preprocess(validation_data)[0]
        return super().fit(
            x=x,
            y=y,
            batch_size=batch_size,
            sample_weight=sample_weight,
            validation_data=validation_data,
            **kwargs,
        )

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        # `fit()` evaluates its validation data through this method with
        # `_use_cached_eval_dataset=True`; that data was preprocessed by
        # `fit()` already and Keras iterates its own cached copy of it.
        if not kwargs.get("_use_cached_eval_dataset", False):
            x, y, sample_weight = self._preprocess(x, y, sample_weight)
        return super().evaluate(
            x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs
        )

    def predict(self, x, batch_size=None, **kwargs):
        x, _, _ = self._preprocess(x)
        return super().predict(x, batch_size=batch_size, **kwargs)


def _is_tf_dataset(x):
    # A dataset can only exist once TensorFlow is imported; don't pay for
    # importing it on JAX or torch just to check.
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)


def _unpack(data):
    if isinstance(data, tuple):
        return data + (None,) * (3 - len(data))
    return data, None, None
