import sys

import keras
import numpy as np

from mistral_hub.models.preprocessor import Preprocessor
from mistral_hub.tokenizers.tokenizer import check_text
from mistral_hub.utils import validation


def _in_tf_graph(x):
    # Only an already imported TensorFlow can be tracing us.
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    return tf.inside_function() or (
        isinstance(x, tf.Tensor) and not hasattr(x, "numpy")
    )


def _to_python_strings(x):
    """Turns a str, bytes, nested lists, numpy or eager tensors into strs."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, (list, tuple)):
        return [_to_python_strings(item) for item in x]
    return x


class CausalLMPreprocessor(Preprocessor):
    """Tokenizes and packs text for causal language modeling.

    `__call__(x)` returns `(x, y, sample_weight)` for `fit()`: `x` holds
    `token_ids` and `padding_mask` of length `sequence_length`, `y` is the
    same ids shifted left by one and `sample_weight` masks padding.

    Labels and weights, in `__call__` and so in `fit`/`evaluate` on raw
    text: a causal LM's labels are its own input shifted by one, so a `y`
    is refused (`ValueError`; to train on other labels, set the task's
    `preprocessor=None` and feed `token_ids`/`padding_mask` with your `y`,
    which Keras then uses as given). `sample_weight` of shape `(n,)` weighs
    each of the `n` examples: it multiplies the example's per-token
    padding weights (finite values >= 0; a wrong shape is a `ValueError`
    naming `sample_weight`). Inside `tf.data`, elements are the text alone:
    an `(x, y)` or `(x, y, sample_weight)` element is refused.
    `generate_preprocess` packs prompts for `generate()` (start token, no
    end token) and `generate_postprocess` turns ids back into text.

    Differences from keras_hub, all for correctness: a training example cut
    by `sequence_length` gets no end token (the text did not end there); a
    prompt that leaves no room to generate raises a `ValueError` instead of
    being cut silently; `generate_preprocess` honours `add_start_token`.

    Runs eagerly in Python/numpy on every backend, and inside
    `tf.data.Dataset.map` through `tf.numpy_function`.

    Args:
        tokenizer: The tokenizer.
        sequence_length: int. Packed length for training and the default
            total length (prompt plus completion) for generation.
        add_start_token: bool. Prepend the start token.
        add_end_token: bool. Append the end token to training examples.
        **kwargs: Standard `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        tokenizer,
        sequence_length=1024,
        add_start_token=True,
        add_end_token=True,
        **kwargs,
    ):
        super().__init__(tokenizer=tokenizer, **kwargs)
        self.sequence_length = sequence_length
        self.add_start_token = add_start_token
        self.add_end_token = add_end_token

    @property
    def sequence_length(self):
        """The packed length of training examples and generation prompts."""
        return self._sequence_length

    @sequence_length.setter
    def sequence_length(self, value):
        self._sequence_length = _check_length("sequence_length", value)

    # --- training -------------------------------------------------------

    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        sequence_length = sequence_length or self.sequence_length
        _check_length("sequence_length", sequence_length)
        if y is not None:
            raise ValueError(
                "`y` must be None: a causal language model's labels are its "
                "input token ids shifted by one, which this preprocessor "
                "makes from `x`. To train on other labels, set the task's "
                "`preprocessor` to None and pass `token_ids`/`padding_mask` "
                f"with your `y`. Received: y={_short_repr(y)}"
            )
        if _in_tf_graph(x):
            if sample_weight is not None:
                raise ValueError(
                    "`sample_weight` is not supported inside `tf.data`: pass "
                    "the text alone, or weights to `fit()` with Python or "
                    f"numpy inputs. Received: sample_weight={sample_weight}"
                )
            return self._call_in_tf_graph(x, sequence_length)
        token_ids, padding_mask = self._pack_for_training(x, sequence_length)
        weights = _example_weights(sample_weight, token_ids.shape[:-1])
        return _training_triplet(token_ids, padding_mask, weights)

    def _pack_for_training(self, x, sequence_length):
        texts = _to_python_strings(x)
        unbatched = isinstance(texts, str)
        texts = [texts] if unbatched else texts
        _check_texts(texts, "x")
        length = sequence_length + 1
        token_ids = np.full((len(texts), length), self.tokenizer.pad_token_id, "int32")
        padding_mask = np.zeros((len(texts), length), "bool")
        start = [self.tokenizer.start_token_id] if self.add_start_token else []
        for row, ids in enumerate(self.tokenizer.tokenize(texts)):
            ids = start + list(ids)
            if self.add_end_token and len(ids) < length:
                ids.append(self.tokenizer.end_token_id)
            ids = ids[:length]
            token_ids[row, : len(ids)] = ids
            padding_mask[row, : len(ids)] = True
        if unbatched:
            return token_ids[0], padding_mask[0]
        return token_ids, padding_mask

    def _call_in_tf_graph(self, x, sequence_length):
        import tensorflow as tf

        def pack(strings):
            return self._pack_for_training(strings, sequence_length)

        token_ids, padding_mask = tf.numpy_function(
            pack, [x], [tf.int32, tf.bool], stateful=False
        )
        shape = x.shape.concatenate([sequence_length + 1])
        token_ids.set_shape(shape)
        padding_mask.set_shape(shape)
        return _training_triplet(token_ids, padding_mask)

    # --- generation -----------------------------------------------------

    def generate_preprocess(self, x, sequence_length=None):
        """Packs prompts for `generate()`.

        Args:
            x: a str, a list of str, or a string array/tensor.
            sequence_length: int. Total length of prompt plus completion;
                defaults to `self.sequence_length`.

        Returns:
            A dict with int32 `token_ids` and bool `padding_mask`, right
            padded; 1-D for a single string.

        Raises:
            ValueError: if a prompt does not leave room for at least one
                generated token.
        """
        sequence_length = sequence_length or self.sequence_length
        _check_length("sequence_length", sequence_length)
        prompts = self.tokenize_prompts(x)
        unbatched = not prompts or not isinstance(prompts[0], list)
        packed = self.pack_prompts([prompts] if unbatched else prompts, sequence_length)
        if unbatched:
            return {key: value[0] for key, value in packed.items()}
        return packed

    def tokenize_prompts(self, x):
        """Turns prompts into token ids for generation, without padding.

        Args:
            x: a str, a list of str, or a string array/tensor.

        Returns:
            A list of int ids (start token included when `add_start_token`)
            for a single string, else a list of such lists.

        Raises:
            ValueError: naming `inputs`, unless `x` is a str or a non-empty
                list of str.

        Example:
        >>> from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
        ...     MistralCausalLMPreprocessor)
        >>> preprocessor = MistralCausalLMPreprocessor.from_preset("mistral_hub_demo")
        >>> ids = preprocessor.tokenize_prompts(["the quick", "a"])
        >>> [row[0] == preprocessor.tokenizer.start_token_id for row in ids]
        [True, True]
        """
        texts = _to_python_strings(x)
        unbatched = isinstance(texts, str)
        texts = [texts] if unbatched else texts
        _check_texts(texts, "inputs")
        start = [self.tokenizer.start_token_id] if self.add_start_token else []
        prompts = [start + list(ids) for ids in self.tokenizer.tokenize(texts)]
        return prompts[0] if unbatched else prompts

    def pack_prompts(self, prompts, sequence_length):
        """Right-pads lists of prompt token ids into generation inputs.

        Args:
            prompts: list of lists of int token ids (start token included).
            sequence_length: int. Total length of prompt plus completion.

        Returns:
            A dict with `(batch, sequence_length)` int32 `token_ids` and
            bool `padding_mask`.
        """
        token_ids = np.full(
            (len(prompts), sequence_length), self.tokenizer.pad_token_id, "int32"
        )
        padding_mask = np.zeros((len(prompts), sequence_length), "bool")
        for row, ids in enumerate(prompts):
            if len(ids) >= sequence_length:
                raise ValueError(
                    f"Prompt {row} is {len(ids)} tokens long, which leaves no room "
                    f"to generate within a total length of {sequence_length}. "
                    "Pass a larger `max_length` (or `max_new_tokens`) or a "
                    "shorter prompt."
                )
            token_ids[row, : len(ids)] = ids
            padding_mask[row, : len(ids)] = True
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def generate_postprocess(self, x):
        """Turns generated `token_ids`/`padding_mask` back into text.

        Positions outside `padding_mask` and special tokens are dropped.

        Args:
            x: a dict with `token_ids` and `padding_mask`, batched or not.

        Returns:
            A str for unbatched inputs, else a list of str.
        """
        token_ids = np.asarray(keras.ops.convert_to_numpy(x["token_ids"]))
        padding_mask = np.asarray(keras.ops.convert_to_numpy(x["padding_mask"])).astype(bool)
        unbatched = token_ids.ndim == 1
        if unbatched:
            token_ids, padding_mask = token_ids[None], padding_mask[None]
        special = np.asarray(self.tokenizer.special_token_ids, "int32")
        keep = padding_mask & ~np.isin(token_ids, special)
        texts = self.tokenizer.detokenize(
            [row[row_keep].tolist() for row, row_keep in zip(token_ids, keep)]
        )
        return texts[0] if unbatched else texts

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "add_start_token": self.add_start_token,
                "add_end_token": self.add_end_token,
            }
        )
        return config


def _training_triplet(token_ids, padding_mask, example_weights=None):
    x = {"token_ids": token_ids[..., :-1], "padding_mask": padding_mask[..., :-1]}
    weights = padding_mask[..., 1:]
    if example_weights is not None:
        weights = weights * example_weights[..., None]
    return x, token_ids[..., 1:], weights


def _example_weights(sample_weight, batch_shape):
    """Checks per-example weights; returns them as float32, or None."""
    if sample_weight is None:
        return None
    weights = validation.concrete_array(sample_weight)
    expected = f"shape {batch_shape}" if batch_shape else "a scalar"
    if weights is None or weights.dtype.kind not in "biuf" or weights.shape != batch_shape:
        shape = None if weights is None else weights.shape
        raise ValueError(
            f"`sample_weight` must hold one weight per example of `x`: "
            f"{expected} for {batch_shape[0] if batch_shape else 1} "
            f"example(s). Received shape {shape}: "
            f"sample_weight={_short_repr(sample_weight)}"
        )
    weights = weights.astype("float32")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(
            "`sample_weight` must hold finite weights >= 0. Received: "
            f"sample_weight={_short_repr(sample_weight)}"
        )
    return weights


def _short_repr(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_length(name, value):
    return validation.check_int(name, value, low=2)


def _check_texts(texts, name):
    if not isinstance(texts, list) or not texts:
        raise ValueError(f"`{name}` must be a string or a non-empty list of strings.")
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(
                f"`{name}` must contain strings. Received an element of type "
                f"{type(text).__name__}: {text!r}"
            )
        check_text(name, text)
