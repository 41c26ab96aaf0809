"""Logits processors: per-step rewrites of the logits inside the decode loop.

A logits processor is any callable
`processor(logits, token_ids, index, prompt_mask) -> logits` where `logits`
is the `(batch, vocab)` float32 tensor predicting position `index`,
`token_ids` the `(batch, length)` sequences so far (positions `< index` are
final) and `prompt_mask` the `(batch, length)` bool mask of prompt tokens.
It must use `keras.ops` only, so that it compiles into the loop on every
backend. Pass a list of them as `generate(logits_processors=[...])`; the
built-in controls (`repetition_penalty`, `presence_penalty`,
`frequency_penalty`, `min_p`) are implemented with the classes below.

Example:

```python
from keras import ops
from mistral_hub.samplers.logits_processors import LogitsProcessor

class BanToken(LogitsProcessor):
    def __init__(self, token_id):
        self.token_id = token_id

    def __call__(self, logits, token_ids, index, prompt_mask):
        banned = ops.arange(ops.shape(logits)[-1]) == self.token_id
        return ops.where(banned[None, :], float("-inf"), logits)
```
"""

import keras
from keras import ops

from mistral_hub.samplers.sampler import check_number


class LogitsProcessor:
    """Base class for logits processors (any matching callable also works)."""

    def __call__(self, logits, token_ids, index, prompt_mask):
        raise NotImplementedError


class _ValueProcessor(LogitsProcessor):
    """A built-in processor equal to any other with the same settings.

    `generate()` keeps one compiled decode loop per set of processors;
    value equality lets `generate(repetition_penalty=1.2)` reuse the loop
    the previous call compiled instead of tracing a new one.
    """

    def _settings(self):
        return tuple(sorted(vars(self).items()))

    def __eq__(self, other):
        return type(self) is type(other) and self._settings() == other._settings()

    def __hash__(self):
        return hash((type(self), self._settings()))


def token_counts(token_ids, include, vocabulary_size):
    """Counts, per row, how often each id occurs where `include` is True.

    Args:
        token_ids: `(batch, length)` int tensor.
        include: `(batch, length)` bool tensor of positions to count.
        vocabulary_size: int.

    Returns:
        A `(batch, vocabulary_size)` float32 tensor of counts.
    """
    batch_size, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    rows = ops.repeat(ops.arange(batch_size, dtype="int32")[:, None], length, axis=1)
    indices = ops.stack(
        [ops.reshape(rows, (-1,)), ops.reshape(ops.cast(token_ids, "int32"), (-1,))],
        axis=1,
    )
    updates = ops.reshape(ops.cast(include, "float32"), (-1,))
    return ops.scatter(indices, updates, (batch_size, vocabulary_size))


def _positions_before(token_ids, index):
    length = ops.shape(token_ids)[1]
    return (ops.arange(length, dtype="int32") < index)[None, :]


class RepetitionPenalty(_ValueProcessor):
    """transformers' repetition penalty over the prompt and generated tokens.

    Logits of tokens already in the sequence are divided by `penalty` when
    positive and multiplied by it when negative (CTRL paper, transformers'
    `RepetitionPenaltyLogitsProcessor`).

    Args:
        penalty: float > 0; values above 1 discourage repetition.
    """

    def __init__(self, penalty):
        check_number("repetition_penalty", penalty, 0.0, float("inf"), low_inclusive=False)
        self.penalty = float(penalty)

    def __call__(self, logits, token_ids, index, prompt_mask):
        include = ops.broadcast_to(
            _positions_before(token_ids, index), ops.shape(token_ids)
        )
        seen = token_counts(token_ids, include, ops.shape(logits)[-1]) > 0
        penalized = ops.where(logits < 0, logits * self.penalty, logits / self.penalty)
        return ops.where(seen, penalized, logits)


class OccurrencePenalty(_ValueProcessor):
    """OpenAI-style presence and frequency penalties over generated tokens.

    `logits[t] -= presence_penalty * (count[t] > 0) + frequency_penalty *
    count[t]`, where `count[t]` is how often `t` was generated so far (the
    prompt does not count, as in the OpenAI API and vLLM).

    Args:
        presence_penalty: float in [-2, 2].
        frequency_penalty: float in [-2, 2].
    """

    def __init__(self, presence_penalty=0.0, frequency_penalty=0.0):
        check_number("presence_penalty", presence_penalty, -2.0, 2.0, low_inclusive=True)
        check_number("frequency_penalty", frequency_penalty, -2.0, 2.0, low_inclusive=True)
        self.presence_penalty = float(presence_penalty)
        self.frequency_penalty = float(frequency_penalty)

    def __call__(self, logits, token_ids, index, prompt_mask):
        generated = ops.logical_and(
            _positions_before(token_ids, index), ops.logical_not(prompt_mask)
        )
        counts = token_counts(token_ids, generated, ops.shape(logits)[-1])
        penalty = self.presence_penalty * ops.cast(counts > 0, "float32")
        return logits - penalty - self.frequency_penalty * counts


class MinP(_ValueProcessor):
    """Keeps tokens whose probability is at least `min_p` times the top one.

    Same rule as transformers' `MinPLogitsWarper`: the most likely token is
    always kept; the others below the threshold get `-inf`.

    Args:
        min_p: float in [0, 1].
    """

    def __init__(self, min_p):
        check_number("min_p", min_p, 0.0, 1.0, low_inclusive=True)
        self.min_p = float(min_p)

    def __call__(self, logits, token_ids, index, prompt_mask):
        probabilities = keras.activations.softmax(ops.cast(logits, "float32"))
        threshold = self.min_p * ops.max(probabilities, axis=-1, keepdims=True)
        return ops.where(probabilities < threshold, float("-inf"), logits)


def chain(processors, prompt_mask):
    """Combines processors into the sampler's `(logits, prompt, index)` hook."""
    processors = list(processors)
    if not processors:
        return None

    def apply(logits, token_ids, index):
        for processor in processors:
            logits = processor(logits, token_ids, index, prompt_mask)
        return logits

    return apply
