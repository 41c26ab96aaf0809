"""Base class of mistral_hub tokenizers."""

import sys

import keras
import numpy as np

from mistral_hub.utils.presets import builtin_presets
from mistral_hub.utils.presets import load_tokenizer_assets
from mistral_hub.utils.presets import save_tokenizer
from mistral_hub.utils.presets import tokenizer_from_preset
from mistral_hub.utils.python_utils import classproperty


def _tf_graph_mode():
    """Whether we are building a TensorFlow graph (`tf.data`, `tf.function`).

    TensorFlow is never imported here: if nobody has imported it there can
    be neither a graph nor a `tf.Tensor` to handle.
    """
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    return tf.inside_function() or not tf.executing_eagerly()


def _short_repr(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _to_numpy(value):
    """Turns a tensor of any supported framework into a numpy array or list."""
    module = type(value).__module__
    if module.startswith("tensorflow") and hasattr(value, "to_list"):
        return value.to_list()  # An eager `tf.RaggedTensor`.
    if module.startswith("torch"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def check_text(name, text):
    """Checks that a `str` is valid Unicode text (encodable as UTF-8).

    Lone UTF-16 surrogates (`"\\ud800"`, from bad JSON or `surrogateescape`
    decoding) are not text: SentencePiece rejects them with an unrelated
    error and tiktoken silently replaces them with U+FFFD.

    Args:
        name: str. The argument's name, for the error message.
        text: str. The text to check.

    Raises:
        ValueError: naming `name`, with the position of the surrogate.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"`{name}` must be valid Unicode text, but it holds a lone UTF-16 "
            f"surrogate {text[e.start]!r} at position {e.start}. Received: "
            f"{name}={_short_repr(text)}"
        ) from None
    return text


def _canonicalize_strings(inputs):
    """Turns tokenizer inputs into a `str` or nested lists of valid `str`."""
    if isinstance(inputs, str):
        return check_text("inputs", str(inputs))
    if isinstance(inputs, bytes):
        try:
            return inputs.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"`inputs` must be UTF-8 encoded: byte {e.start} of "
                f"{_short_repr(inputs)} is not valid UTF-8 ({e.reason})."
            ) from None
    if isinstance(inputs, (list, tuple)):
        return [_canonicalize_strings(item) for item in inputs]
    if not isinstance(inputs, np.ndarray) and _is_tensor(inputs):
        inputs = _to_numpy(inputs)
        if isinstance(inputs, list):
            return _canonicalize_strings(inputs)
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "USO":
        return _canonicalize_strings(inputs.tolist())
    raise ValueError(
        "`inputs` must be a string, bytes, a (nested) list of strings, or an "
        "array or tensor of strings. Received: "
        f"{type(inputs).__name__} {_short_repr(inputs)}"
    )


def _flatten_strings(nested, out):
    if isinstance(nested, str):
        out.append(nested)
    else:
        for item in nested:
            _flatten_strings(item, out)
    return out


def _unflatten_strings(nested, values):
    if isinstance(nested, str):
        return next(values)
    return [_unflatten_strings(item, values) for item in nested]


def _batch_shape(strings):
    if isinstance(strings, str):
        return ()
    shapes = {_batch_shape(item) for item in strings}
    if len(shapes) > 1:
        raise ValueError(
            "With `sequence_length` set, nested `inputs` must be rectangular "
            "(all lists at one level of the same length)."
        )
    return (len(strings),) + (shapes.pop() if shapes else ())


def _is_id(value):
    return isinstance(value, (int, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


def _canonicalize_ids(inputs):
    """Turns detokenizer inputs into python lists.

    Returns a list of ints for one id sequence, else nested lists whose
    innermost lists are id sequences.
    """
    if _is_id(inputs):
        return [int(inputs)]
    if not isinstance(inputs, (list, tuple, np.ndarray)) and _is_tensor(inputs):
        inputs = _to_numpy(inputs)
    if isinstance(inputs, np.ndarray):
        if inputs.dtype.kind not in "iu":
            raise ValueError(
                "`inputs` must contain integer token ids. Received an array "
                f"of dtype {inputs.dtype}: {_short_repr(inputs)}"
            )
        inputs = inputs.tolist()
        if isinstance(inputs, int):
            return [inputs]
    if not isinstance(inputs, (list, tuple)):
        raise ValueError(
            "`inputs` must be integer token ids: an int, a (nested) list of "
            "ints, or an integer array or tensor. Received: "
            f"{type(inputs).__name__} {_short_repr(inputs)}"
        )
    if _is_sequence(inputs):
        return [int(i) for i in inputs]
    if any(_is_id(item) for item in inputs):
        raise ValueError(
            "`inputs` mixes token ids and sequences of token ids at one "
            f"level. Received: {_short_repr(inputs)}"
        )
    return [_canonicalize_ids(item) for item in inputs]


def _is_sequence(nested):
    return all(_is_id(item) for item in nested)


def _flatten_sequences(nested, out):
    if _is_sequence(nested):
        out.append(nested)
    else:
        for item in nested:
            _flatten_sequences(item, out)
    return out


def _unflatten_sequences(nested, texts):
    if _is_sequence(nested):
        return next(texts)
    return [_unflatten_sequences(item, texts) for item in nested]


def _is_tensor(value):
    return hasattr(value, "__array__") or type(value).__module__.startswith(
        "tensorflow"
    )


@keras.saving.register_keras_serializable(package="mistral_hub")
class Tokenizer(keras.layers.Layer):
    """Base class of tokenizer layers: strings in, integer token ids out.

    Subclasses implement `_encode_strings(texts)` (a list of `str` to a
    list of id lists) and `_decode_ids(ids)` (the reverse) plus the
    vocabulary methods; this class turns them into `tokenize()` and
    `detokenize()` for every kind of input:

    - Eagerly (any backend), inputs may be a `str`, `bytes`, nested lists,
      numpy arrays or eager tensors of strings. Outputs are python lists of
      ids whose nesting mirrors the input, or, when `sequence_length` is
      set, a padded/truncated numpy array of shape `input_shape +
      (sequence_length,)`. TensorFlow is not needed.
    - While TensorFlow builds a graph (inside `tf.data.Dataset.map` or a
      `tf.function`), `tokenize()` returns a `tf.RaggedTensor` (a dense
      tensor for a scalar input or when `sequence_length` is set), computed
      by calling the same python code through `tf.numpy_function`.

    Calling the layer is the same as calling `tokenize()`.

    Special tokens are registered with `_add_special_token(token, name)`,
    which defines the attributes `name` (the token string) and `name_id`
    (its id, resolved whenever a vocabulary is set).

    Args:
        sequence_length: int or None. If set, outputs are padded with
            `pad_token_id` or truncated to this length.
        dtype: The integer dtype of the ids. Defaults to `"int32"`.
        config_file: str. The name of the file a preset stores this
            tokenizer's config in.
        **kwargs: Standard `keras.layers.Layer` arguments.

    Example:
    >>> class CharTokenizer(Tokenizer):
    ...     def _encode_strings(self, texts):
    ...         return [[ord(c) for c in text] for text in texts]
    ...     def _decode_ids(self, ids):
    ...         return ["".join(map(chr, seq)) for seq in ids]
    ...     def vocabulary_size(self):
    ...         return 0x110000
    >>> tokenizer = CharTokenizer()
    >>> tokenizer(["hi", "you"])
    [[104, 105], [121, 111, 117]]
    >>> tokenizer.detokenize([104, 105])
    'hi'
    """

    pad_token_id = 0
    # What the preset code builds and saves this as (no isinstance there).
    preset_kind = "tokenizer"
    # Names of the asset files `save_assets()` writes, for preset loaders.
    file_assets = ()
    # Asset files keras_hub writes instead, read by `load_keras_hub_assets()`
    # when a preset lacks `file_assets`.
    keras_hub_file_assets = ()

    def __init__(
        self,
        sequence_length=None,
        dtype="int32",
        config_file="tokenizer.json",
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        if "int" not in keras.backend.standardize_dtype(self.compute_dtype):
            raise ValueError(
                f"`dtype` must be an integer dtype. Received: dtype={dtype!r}"
            )
        if sequence_length is not None and (
            not _is_id(sequence_length) or sequence_length < 1
        ):
            raise ValueError(
                "`sequence_length` must be None or a positive int. "
                f"Received: sequence_length={sequence_length!r}"
            )
        self.sequence_length = sequence_length
        self.config_file = config_file
        # Tokenizers take raw strings and have no weights to build.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.built = True

    # --- subclass interface -------------------------------------------

    def _encode_strings(self, texts):
        raise NotImplementedError(
            f"{type(self).__name__} does not implement `_encode_strings()`."
        )

    def _decode_ids(self, ids):
        raise NotImplementedError(
            f"{type(self).__name__} does not implement `_decode_ids()`."
        )

    def _check_vocabulary(self):
        """Raises a ValueError if no vocabulary has been set yet."""

    def vocabulary_size(self):
        """Returns the number of ids of the vocabulary."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement `vocabulary_size()`."
        )

    def get_vocabulary(self):
        """Returns the list of tokens, indexed by id."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement `get_vocabulary()`."
        )

    def id_to_token(self, id):
        """Returns the token string of an id."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement `id_to_token()`."
        )

    def token_to_id(self, token):
        """Returns the id of a token string."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement `token_to_id()`."
        )

    def save_assets(self, dir_path):
        """Writes the vocabulary files (`file_assets`) into `dir_path`."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement `save_assets()`."
        )

    def load_assets(self, dir_path):
        """Reads the vocabulary files written by `save_assets(dir_path)`."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement `load_assets()`."
        )

    # --- special tokens -------------------------------------------------

    def _add_special_token(self, token, name):
        self._special_token_names = getattr(
            self, "_special_token_names", ()
        ) + (name,)
        setattr(self, name, token)
        setattr(self, f"{name}_id", None)

    def _update_special_token_ids(self):
        """Resolves the ids of the registered special tokens."""
        for name in getattr(self, "_special_token_names", ()):
            token = getattr(self, name)
            token_id = self._special_token_id_or_none(token)
            if token_id is None:
                raise ValueError(
                    f"Cannot find special token {token!r} in the vocabulary "
                    f"of {type(self).__name__}. The vocabulary must define "
                    f"{token!r} as a token."
                )
            setattr(self, f"{name}_id", token_id)

    def _special_token_id_or_none(self, token):
        vocabulary = self.get_vocabulary()
        return vocabulary.index(token) if token in vocabulary else None

    @property
    def special_tokens(self):
        """The registered special token strings, in registration order."""
        names = getattr(self, "_special_token_names", ())
        return list(dict.fromkeys(getattr(self, name) for name in names))

    @property
    def special_token_ids(self):
        """The ids of `special_tokens`, in the same order."""
        names = getattr(self, "_special_token_names", ())
        ids = [getattr(self, f"{name}_id") for name in names]
        if None in ids:
            raise ValueError(
                "Cannot access `special_token_ids` before a vocabulary has "
                f"been set on {type(self).__name__}."
            )
        return list(dict.fromkeys(ids))

    # --- tokenize / detokenize ------------------------------------------

    def __call__(self, inputs):
        # Keras' `Layer.__call__` machinery (input conversion, autocasting,
        # symbolic build) does not apply to strings; tokenize directly.
        return self.tokenize(inputs)

    def call(self, inputs):
        return self.tokenize(inputs)

    def tokenize(self, inputs):
        """Turns strings into token ids.

        Args:
            inputs: A `str`, `bytes`, (nested) list of strings, or an array
                or tensor of strings.

        Returns:
            Eagerly: a `list[int]` for one string, else nested lists of
            `list[int]` mirroring `inputs`; with `sequence_length` set, a
            numpy array of shape `input_shape + (sequence_length,)`. While
            building a TensorFlow graph: a `tf.RaggedTensor` (dense for a
            scalar input or with `sequence_length` set).
        """
        self._check_vocabulary()
        if _tf_graph_mode():
            return self._tokenize_in_tf_graph(inputs)
        strings = _canonicalize_strings(inputs)
        texts = _flatten_strings(strings, [])
        if self.sequence_length is None:
            return _unflatten_strings(strings, iter(self._encode_strings(texts)))
        outputs = np.full(
            _batch_shape(strings) + (self.sequence_length,),
            self.pad_token_id,
            self.compute_dtype,
        )
        rows = outputs.reshape(-1, self.sequence_length)
        for row, ids in zip(rows, self._encode_strings(texts)):
            ids = ids[: self.sequence_length]
            row[: len(ids)] = ids
        return outputs

    def _encode_to_ragged_components(self, strings):
        ids = self._encode_strings([s.decode("utf-8") for s in strings.tolist()])
        lengths = np.array([len(seq) for seq in ids], "int64")
        values = np.fromiter(
            (i for seq in ids for i in seq), self.compute_dtype, lengths.sum()
        )
        return values, lengths

    def _tokenize_in_tf_graph(self, inputs):
        import tensorflow as tf

        inputs = tf.convert_to_tensor(inputs)
        if inputs.dtype != tf.string or inputs.shape.rank is None:
            raise ValueError(
                "Inside a TensorFlow graph, `inputs` must be a string tensor "
                f"of known rank. Received: {inputs}"
            )
        values, lengths = tf.numpy_function(
            self._encode_to_ragged_components,
            [tf.reshape(inputs, [-1])],
            [tf.as_dtype(self.compute_dtype), tf.int64],
            stateful=False,
        )
        values.set_shape([None])
        lengths.set_shape([None])
        tokens = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
        shape = tf.shape(inputs, out_type=tf.int64)
        for axis in range(inputs.shape.rank - 1, 0, -1):
            tokens = tf.RaggedTensor.from_uniform_row_length(
                tokens, shape[axis], validate=False
            )
        if self.sequence_length is not None:
            output_shape = [1] if inputs.shape.rank == 0 else inputs.shape
            tokens = tokens.to_tensor(
                default_value=tf.cast(self.pad_token_id, self.compute_dtype),
                shape=tf.TensorShape(output_shape).concatenate(
                    [self.sequence_length]
                ),
            )
        if inputs.shape.rank == 0:
            return tokens[0] if self.sequence_length else tokens.values
        return tokens

    def detokenize(self, inputs):
        """Turns token ids back into strings.

        Args:
            inputs: An id sequence (list, numpy array, or jax / torch /
                TensorFlow tensor), or nested lists / a 2-D array of them.

        Returns:
            A `str` for one id sequence, else (nested) lists of `str`. While
            building a TensorFlow graph, a string `tf.Tensor`.
        """
        self._check_vocabulary()
        if _tf_graph_mode():
            return self._detokenize_in_tf_graph(inputs)
        nested = _canonicalize_ids(inputs)
        if _is_sequence(nested):
            return self._decode_ids(self._checked([nested]))[0]
        sequences = _flatten_sequences(nested, [])
        texts = iter(self._decode_ids(self._checked(sequences)))
        return _unflatten_sequences(nested, texts)

    def _checked(self, sequences):
        size = self.vocabulary_size()
        for seq in sequences:
            for i in seq:
                if not 0 <= i < size:
                    raise ValueError(
                        f"Token id {i} is out of range: ids must be in "
                        f"[0, {size - 1}] for this vocabulary."
                    )
        return sequences

    def _decode_ragged_components(self, values, row_splits):
        values = values.tolist()
        bounds = row_splits.tolist()
        sequences = [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        # An empty batch is skipped: SentencePiece reads `[]` as one sequence.
        texts = self._decode_ids(self._checked(sequences)) if sequences else []
        return np.array([t.encode("utf-8") for t in texts], dtype=object)

    def _detokenize_in_tf_graph(self, inputs):
        import tensorflow as tf

        if not isinstance(inputs, tf.RaggedTensor):
            inputs = tf.convert_to_tensor(inputs)
        rank = inputs.shape.rank
        if rank not in (1, 2) or not inputs.dtype.is_integer:
            raise ValueError(
                "Inside a TensorFlow graph, `inputs` must be an integer "
                f"tensor of rank 1 or 2. Received: {inputs}"
            )
        ragged = inputs if rank == 2 else inputs[tf.newaxis]
        if not isinstance(ragged, tf.RaggedTensor):
            ragged = tf.RaggedTensor.from_tensor(ragged)
        outputs = tf.numpy_function(
            self._decode_ragged_components,
            [ragged.values, ragged.row_splits],
            tf.string,
            stateful=False,
        )
        outputs.set_shape([None])
        return outputs if rank == 2 else outputs[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "config_file": self.config_file,
            }
        )
        return config

    # --- presets (implemented in mistral_hub.utils.presets) ----------

    @classproperty
    def presets(cls):
        """Built-in presets of this class: name -> metadata and handle."""
        return builtin_presets(cls)

    @classmethod
    def from_preset(cls, preset, config_file="tokenizer.json", **kwargs):
        """Builds the tokenizer of a preset (see `Backbone.from_preset`).

        Called on a base class, the class is read from the preset; Mistral
        presets give a `MistralTokenizer` (SentencePiece) or a
        `MistralTekkenTokenizer`.

        Args:
            preset: str or path. The preset.
            config_file: str. The tokenizer config file in a Keras preset.
            **kwargs: config overrides, e.g. `sequence_length=16`.
        """
        return tokenizer_from_preset(cls, preset, config_file, **kwargs)

    def save_to_preset(self, preset_dir, overwrite=False):
        """Saves the config and vocabulary files atomically.

        Args:
            preset_dir: str or path. Adds to an existing Keras preset there
                (e.g. next to a saved backbone, as keras_hub does).
            overwrite: bool. Needed to write into a non-empty directory that
                is not a Keras preset, or into a task preset (`task.json`),
                which this part alone would leave inconsistent; the
                directory is then replaced by what is written.
        """
        save_tokenizer(self, preset_dir, overwrite)

    def load_preset_assets(self, preset):
        """Loads the vocabulary files of `preset` into this tokenizer."""
        load_tokenizer_assets(self, preset)

    def export_to_transformers(self, path, overwrite=False):
        """Writes `tokenizer.model` (or `tekken.json`) for transformers."""
        from mistral_hub.utils.transformers.export import export_to_transformers

        export_to_transformers(self, path, overwrite=overwrite)
