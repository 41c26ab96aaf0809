import sys

import keras

from mistral_hub.models.backbone import Backbone
from mistral_hub.models.functional_model import FunctionalModel
from mistral_hub.models.preprocessor import Preprocessor
from mistral_hub.utils import backend
from mistral_hub.utils import validation
from mistral_hub.utils.presets import builtin_presets
from mistral_hub.utils.presets import save_task
from mistral_hub.utils.presets import task_from_preset
from mistral_hub.utils.python_utils import classproperty


class Task(FunctionalModel):
    """Base class for end-to-end models: a backbone, a head and a preprocessor.

    `fit`, `evaluate` and `predict` run the attached preprocessor on raw
    inputs. Python and numpy inputs are preprocessed once in Python, so
    fine-tuning on JAX or torch needs no TensorFlow; a `tf.data.Dataset` is
    mapped through the preprocessor instead.

    Inputs are checked before the Keras trainer runs: raw text must be a
    non-empty batch (a list, array or tensor of strings; a single string is
    a `ValueError` naming `x`, as Keras reads `x` as a batch of examples),
    and with `preprocessor=None` the `token_ids`/`padding_mask` dict is
    checked against the vocabulary (ids in range, right-padded masks), and
    integer labels `y` too. How `y` and `sample_weight` are used with raw
    text is up to the preprocessor (see `CausalLMPreprocessor`); a concrete
    `sample_weight` that is 0 everywhere is a `ValueError`, since the
    weighted mean loss would be 0/0.

    A call that fails part-way leaves the model usable: on JAX, whose
    trainer detaches the variables' values while it runs, the values are
    put back (as they were after the last completed step, or before the
    call if no step completed); TensorFlow and torch update the variables
    in place, one completed step at a time.

    Preset loading and saving are added by `mistral_hub.utils.presets`.
    """

    # What the preset code builds and saves this as (no isinstance there).
    preset_kind = "task"
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
        expected = self.backbone_cls or Backbone
        if not isinstance(value, expected):
            raise TypeError(
                f"`backbone` must be a `{expected.__name__}`. Received: "
                f"backbone={_short_repr(value)} (of type {type(value).__name__})"
            )
        self._backbone = value
        self._check_vocabulary_sizes()

    @property
    def preprocessor(self):
        """The preprocessor, or None to feed preprocessed tensors."""
        return getattr(self, "_preprocessor", None)

    @preprocessor.setter
    def preprocessor(self, value):
        if value is not None and not isinstance(value, Preprocessor):
            expected = getattr(self.preprocessor_cls, "__name__", "Preprocessor")
            raise TypeError(
                f"`preprocessor` must be a `{expected}` or None. Received: "
                f"preprocessor={_short_repr(value)} (of type {type(value).__name__})"
            )
        self._preprocessor = value
        self._check_vocabulary_sizes()

    def _check_vocabulary_sizes(self):
        # A tokenizer may be smaller than the embedding (checkpoints pad the
        # embedding to a round size) but not larger: its top ids would index
        # past the embedding.
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        backbone_size = getattr(self.backbone, "vocabulary_size", None)
        if tokenizer is None or backbone_size is None:
            return
        try:
            tokenizer_size = tokenizer.vocabulary_size()
        except ValueError:
            return  # No vocabulary yet (a preset loads it afterwards).
        if tokenizer_size > backbone_size:
            raise ValueError(
                f"The tokenizer's vocabulary ({tokenizer_size} ids) is larger "
                f"than the backbone's `vocabulary_size` ({backbone_size}): ids "
                f"from {backbone_size} on have no embedding. Use a backbone "
                "with `vocabulary_size` >= the tokenizer's "
                "`vocabulary_size()`."
            )

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

    # --- presets (implemented in mistral_hub.utils.presets) ----------

    @classproperty
    def presets(cls):
        """Built-in presets of this class: name -> metadata and handle."""
        return builtin_presets(cls)

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
        return task_from_preset(cls, preset, load_weights, strict, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10, overwrite=False):
        """Saves `task.json`, the backbone and the preprocessor atomically.

        Args:
            preset_dir: str or path. Adds to an existing Keras preset there.
            max_shard_size: float (GB) or a size string like `"5GB"`;
                weights larger than this are sharded.
            overwrite: bool. Needed to replace a non-empty directory that is
                not a Keras preset.
        """
        save_task(self, preset_dir, max_shard_size, overwrite)

    def export_to_transformers(self, path, max_shard_size="5GB", overwrite=False):
        """Writes model, tokenizer and generation config for transformers."""
        from mistral_hub.utils.transformers.export import export_to_transformers

        export_to_transformers(self, path, max_shard_size=max_shard_size, overwrite=overwrite)

    # --- preprocessing in fit / evaluate / predict ------------------------

    def _preprocess(self, x, y=None, sample_weight=None):
        """Checks and preprocesses raw `x` into `(x, y, sample_weight)`."""
        _check_not_all_zero(sample_weight)
        if x is None:
            return x, y, sample_weight
        if self.preprocessor is None:
            self._check_token_inputs(x, y)
            return x, y, sample_weight
        if _is_tf_dataset(x):
            import tensorflow as tf

            def preprocess(*sample):
                return self.preprocessor(*sample)

            x = x.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
            return x.prefetch(tf.data.AUTOTUNE), None, None
        _check_text_batch(x)
        return self.preprocessor(x, y, sample_weight)

    def _check_token_inputs(self, x, y):
        """Checks concrete preprocessed inputs against the vocabulary."""
        vocabulary_size = getattr(self.backbone, "vocabulary_size", None)
        if vocabulary_size is None or not isinstance(x, dict) or "token_ids" not in x:
            return
        token_ids = validation.check_token_ids("x['token_ids']", x["token_ids"], vocabulary_size)
        if token_ids is not None and (token_ids.ndim == 0 or len(token_ids) == 0):
            raise ValueError(
                "`x['token_ids']` must hold at least one example (a "
                f"(batch, sequence) array). Received shape {token_ids.shape}."
            )
        validation.check_token_inputs("x", x, vocabulary_size)
        labels = validation.concrete_array(y) if y is not None else None
        if labels is not None and labels.dtype.kind in "iu":
            validation.check_token_ids("y", labels, vocabulary_size)

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None, validation_data=None, **kwargs):
        """Trains the model; `keras.Model.fit` with preprocessing.

        With a preprocessor, `x` is a batch of raw text (a list, array,
        tensor or `tf.data.Dataset` of strings), `y` must be None (a causal
        LM's labels are its own input shifted by one) and `sample_weight`,
        of shape `(len(x),)`, weighs each example's tokens. With
        `preprocessor=None`, `x` is a `token_ids`/`padding_mask` dict and
        `y` and `sample_weight` are used as Keras uses them. A failed call
        leaves the variables usable (see `backend.run_keeping_variables`).

        Example:
        >>> from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
        >>> causal_lm = MistralCausalLM.from_preset("mistral_hub_demo")
        >>> causal_lm.preprocessor.sequence_length = 16
        >>> history = causal_lm.fit(["the quick fox", "the earth is round"],
        ...     sample_weight=[1.0, 0.5], batch_size=2, verbose=0)
        """
        if not self.compiled:
            raise ValueError("You must call `compile()` before calling `fit()`.")
        x, y, sample_weight = self._preprocess(x, y, sample_weight)
        if validation_data is not None and not _is_tf_dataset(validation_data):
            validation_data = self._preprocess(*_unpack(validation_data))
        elif validation_data is not None:
            validation_data = self._preprocess(validation_data)[0]
        return backend.run_keeping_variables(
            self,
            super().fit,
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
        return backend.run_keeping_variables(
            self,
            super().evaluate,
            x=x,
            y=y,
            batch_size=batch_size,
            sample_weight=sample_weight,
            **kwargs,
        )

    def predict(self, x, batch_size=None, **kwargs):
        x, _, _ = self._preprocess(x)
        return backend.run_keeping_variables(
            self, super().predict, x=x, batch_size=batch_size, **kwargs
        )


def _is_tf_dataset(x):
    # A dataset can only exist once TensorFlow is imported; don't pay for
    # importing it on JAX or torch just to check.
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)


def _short_repr(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_text_batch(x):
    """Refuses a single string or an empty batch where Keras wants a batch."""
    if isinstance(x, (str, bytes)) or (hasattr(x, "shape") and len(x.shape) == 0):
        raise ValueError(
            "`x` must be a batch of examples (a list, array or tensor of "
            "strings), not a single string: wrap it in a list, e.g. "
            f"`fit([text])`. Received: x={_short_repr(x)}"
        )
    if hasattr(x, "__len__") and len(x) == 0:
        raise ValueError(
            "`x` must hold at least one example. Received an empty batch: "
            f"x={_short_repr(x)}"
        )


def _check_not_all_zero(sample_weight):
    weights = None if sample_weight is None else validation.concrete_array(sample_weight)
    if weights is not None and weights.size and weights.dtype.kind in "biuf" and not weights.any():
        raise ValueError(
            "`sample_weight` is 0 for every example, so the weighted mean "
            "loss and metrics are undefined (0/0). Received: "
            f"sample_weight={_short_repr(weights)}"
        )


def _unpack(data):
    if isinstance(data, tuple):
        return data + (None,) * (3 - len(data))
    return data, None, None
