"""Prompts into one right-padded batch of token ids, checked.

Example:
>>> import numpy as np
>>> token_ids, padding_mask = token_batch(
...     {"token_ids": [[1, 5, 0]], "padding_mask": [[1, 1, 0]]}, vocabulary_size=10)
>>> token_ids.tolist(), padding_mask.tolist()
([[1, 5, 0]], [[True, True, False]])
>>> token_batch({"token_ids": [[1, 12, 0]], "padding_mask": [[1, 1, 0]]}, 10)
Traceback (most recent call last):
...
ValueError: `token_ids` must hold token ids in [0, 9] (the vocabulary size is 10). Received token_ids[0, 1]=12.
"""

import collections

import numpy as np
from keras import ops

from mistral_hub.utils import validation


class TokenizedPrompts(
    collections.namedtuple(
        "TokenizedPrompts", ["token_ids", "unbatched", "return_token_ids"], defaults=[False]
    )
):
    """Prompts already turned into ids (with the start token), e.g. by a chat template.

    With `return_token_ids`, `generate()` returns the `token_ids` and
    `padding_mask` it generated instead of text (as without a
    preprocessor), so that callers can read control tokens such as
    `[TOOL_CALLS]`, count tokens or score them.
    """


def prompt_batch(inputs, preprocessor, options, vocabulary_size):
    """Turns one batch of `generate()` inputs into right-padded ids.

    Args:
        inputs: text (with a preprocessor), `TokenizedPrompts`, or a dict of
            `token_ids` and `padding_mask` (without one).
        preprocessor: the task's preprocessor, or None.
        options: the call's `GenerationOptions`.
        vocabulary_size: int, the model's vocabulary size.

    Returns:
        `(token_ids, padding_mask, unbatched)`: `(batch, total_length)`
        int32 ids and bool mask, each prompt repeated
        `options.num_return_sequences` times, and whether `inputs` was a
        single prompt.

    Raises:
        ValueError: for malformed inputs, ids outside the vocabulary or a
            prompt that leaves no room to generate.
    """
    unbatched = False
    if preprocessor is not None:
        if isinstance(inputs, TokenizedPrompts):
            prompts, unbatched = inputs.token_ids, inputs.unbatched
        else:
            prompts = preprocessor.tokenize_prompts(inputs)
            unbatched = not prompts or not isinstance(prompts[0], list)
            prompts = [prompts] if unbatched else prompts
        longest = max(len(p) for p in prompts)
        total_length = (
            longest + options.max_new_tokens
            if options.max_new_tokens is not None
            else options.max_length or preprocessor.sequence_length
        )
        packed = preprocessor.pack_prompts(prompts, total_length)
        token_ids, padding_mask = packed["token_ids"], packed["padding_mask"]
    else:
        token_ids, padding_mask = token_batch(inputs, vocabulary_size)
        if options.max_new_tokens is not None:
            token_ids, padding_mask = _resize(
                token_ids, padding_mask, padding_mask.sum(-1).max() + options.max_new_tokens
            )
    # Ids from a tokenizer or chat template can still exceed a smaller
    # backbone's vocabulary.
    validation.check_token_ids("inputs", token_ids, vocabulary_size)
    if options.num_return_sequences > 1:
        token_ids = np.repeat(token_ids, options.num_return_sequences, axis=0)
        padding_mask = np.repeat(padding_mask, options.num_return_sequences, axis=0)
    prompt_lengths = padding_mask.sum(axis=-1)
    if prompt_lengths.min() < 1:
        raise ValueError(
            "Every prompt needs at least one token (e.g. the start token)."
        )
    if prompt_lengths.max() >= token_ids.shape[1]:
        raise ValueError(
            f"A prompt of {prompt_lengths.max()} tokens leaves no room to "
            f"generate within a total length of {token_ids.shape[1]}."
        )
    return token_ids, padding_mask, unbatched


def token_batch(inputs, vocabulary_size):
    """Checks token inputs given without a preprocessor.

    Args:
        inputs: a dict of `token_ids` and `padding_mask`, `(batch, length)`
            or `(length,)` arrays or tensors; ids are integers in
            `[0, vocabulary_size)` and every row of the mask is ones then
            zeros (right padding).
        vocabulary_size: int.

    Returns:
        `(token_ids, padding_mask)` as 2-D int32 and bool numpy arrays.

    Raises:
        ValueError: naming `inputs`, `token_ids` or `padding_mask`.
    """
    if not isinstance(inputs, dict) or not {"token_ids", "padding_mask"} <= set(inputs):
        raise ValueError(
            "Without a preprocessor, `inputs` must be a dict with `token_ids` "
            f"and `padding_mask`. Received: {type(inputs).__name__}"
        )
    token_ids = validation.check_token_ids(
        "token_ids", ops.convert_to_numpy(inputs["token_ids"]), vocabulary_size
    )
    padding_mask = validation.check_padding_mask(
        "padding_mask", ops.convert_to_numpy(inputs["padding_mask"]), token_ids.shape
    )
    if token_ids.ndim == 1:
        token_ids, padding_mask = token_ids[None], padding_mask[None]
    if token_ids.ndim != 2:
        raise ValueError(
            "`token_ids` and `padding_mask` must have a (batch, length) shape. "
            f"Received shape {token_ids.shape}."
        )
    if token_ids.shape[0] == 0:
        raise ValueError(
            "`inputs` must hold at least one prompt. Received `token_ids` of "
            f"shape {token_ids.shape}."
        )
    return token_ids.astype("int32"), padding_mask


def _resize(token_ids, padding_mask, length):
    if length <= token_ids.shape[1]:
        return token_ids[:, :length], padding_mask[:, :length]
    pad = length - token_ids.shape[1]
    return (
        np.pad(token_ids, ((0, 0), (0, pad))),
        np.pad(padding_mask, ((0, 0), (0, pad))),
    )
