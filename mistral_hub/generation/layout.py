"""Where prompts sit in the decode batch, and back.

`generate()` receives right-padded prompts (each starting at column 0).
With a `max_new_tokens` budget and prompts of different lengths, they are
right-aligned for decoding (`align_right`) so every row decodes from its
first new token, then moved back (`align_left`); `strip_prompt` rolls each
row's prompt out of the output as keras_hub does.

Example:
>>> import numpy as np
>>> ids, mask = align_right(np.array([[7, 8, 0], [9, 0, 0]]), [2, 1], 2, 1)
>>> ids.tolist(), mask.astype(int).tolist()
([[7, 8, 0], [0, 9, 0]], [[1, 1, 0], [0, 1, 0]])
"""

import numpy as np

# Prefill lengths are rounded up to a multiple of this, so JAX and
# TensorFlow compile one prefill per bucket instead of one per prompt length.
PREFILL_BUCKET = 64


def round_up(value, multiple):
    """`value` rounded up to a multiple of `multiple`."""
    return -(-value // multiple) * multiple


def align_right(token_ids, prompt_lengths, prompt_end, new_tokens):
    """Left-pads right-padded prompts so that all of them end at `prompt_end`.

    Returns `(token_ids, padding_mask)` of width `prompt_end + new_tokens`.
    """
    batch_size = token_ids.shape[0]
    aligned_ids = np.zeros((batch_size, prompt_end + new_tokens), token_ids.dtype)
    aligned_mask = np.zeros(aligned_ids.shape, bool)
    for row, length in enumerate(prompt_lengths):
        aligned_ids[row, prompt_end - length : prompt_end] = token_ids[row, :length]
        aligned_mask[row, prompt_end - length : prompt_end] = True
    return aligned_ids, aligned_mask


def align_left(token_ids, output_mask, prompt_lengths, prompt_end, width):
    """Inverse of `align_right`: each row back to column 0, `width` wide."""
    batch_size, aligned_width = token_ids.shape
    left_ids = np.zeros((batch_size, width), token_ids.dtype)
    left_mask = np.zeros((batch_size, width), bool)
    for row, length in enumerate(prompt_lengths):
        start = prompt_end - length
        kept = min(aligned_width - start, width)
        left_ids[row, :kept] = token_ids[row, start : start + kept]
        left_mask[row, :kept] = output_mask[row, start : start + kept]
    return left_ids, left_mask


def strip_prompt(token_ids, output_mask, prompt_lengths):
    """Rolls each row left by its prompt length, keeping generated positions.

    Same layout as keras_hub: the prompt wraps to the end of the row and only
    generated positions stay in the mask.
    """
    stripped_ids = np.empty_like(token_ids)
    stripped_mask = np.zeros_like(output_mask)
    for row, length in enumerate(prompt_lengths):
        stripped_ids[row] = np.roll(token_ids[row], -length)
        generated = output_mask[row].copy()
        generated[:length] = False
        stripped_mask[row] = np.roll(generated, -length)
    return stripped_ids, stripped_mask
