"""Shared fixtures for the sampler tests: a 26-letter vocabulary and a way to
run a sampler eagerly or inside the current backend's compiler."""

import keras
import numpy as np
from keras import ops
from keras import tree

VOCAB = "abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(VOCAB)
LENGTH = 12
HIDDEN_DIM = 5

# Call arguments that are tensors (traced when compiled); the others
# (`stop_token_ids`, `logits_processor`) are static.
_TENSOR_ARGS = ("prompt", "cache", "index", "mask", "hidden_states", "seed")


def ids(*texts):
    """Returns a `(len(texts), len(text))` int32 array of letter ids."""
    return np.array([[VOCAB.index(c) for c in t] for t in texts], "int32")


def text(token_ids):
    """Returns the letters of a `(batch, length)` array of ids."""
    return ["".join(VOCAB[i] for i in row) for row in np.asarray(token_ids)]


def compile_sampler(sampler, next, compiled, **static_kwargs):
    """Returns `f(**tensor_kwargs)` calling `sampler` and returning numpy.

    With `compiled`, `f` runs inside one `jax.jit` or `tf.function` (traced
    once per input signature, so repeated calls reuse it) with every tensor
    argument, including `index`, traced; on torch, which generates eagerly,
    it runs under `torch.no_grad()`. Otherwise `f` calls `sampler` directly.
    """

    def run(tensors):
        return sampler(next, **tensors, **static_kwargs)

    backend = keras.config.backend()
    if compiled and backend == "jax":
        import jax

        run = jax.jit(run)
    elif compiled and backend == "tensorflow":
        import tensorflow as tf

        run = tf.function(run)
    elif compiled:
        import torch

        run = torch.no_grad()(run)

    def call(**tensors):
        tensors = {k: v for k, v in tensors.items() if v is not None}
        if compiled and "index" in tensors:
            tensors["index"] = np.array(tensors["index"], "int32")
        tensors = tree.map_structure(ops.convert_to_tensor, tensors)
        return tree.map_structure(ops.convert_to_numpy, run(tensors))

    return call


def call_sampler(sampler, next, compiled, **kwargs):
    """Calls `sampler(next, **kwargs)` once, see `compile_sampler`."""
    tensors = {name: kwargs.pop(name, None) for name in _TENSOR_ARGS}
    return compile_sampler(sampler, next, compiled, **kwargs)(**tensors)


def batch_size_of(prompt):
    return ops.shape(prompt)[0]


def favour(token_ids, batch_size):
    """Logits that make `token_ids` (scalar or `(batch,)`) certain."""
    token_ids = ops.broadcast_to(ops.cast(token_ids, "int32"), (batch_size,))
    return ops.one_hot(token_ids, VOCAB_SIZE) * 1e9


def constant_hidden(prompt):
    return ops.ones((batch_size_of(prompt), HIDDEN_DIM))


def favour_next(token_id):
    """A `next` that always predicts `token_id`."""

    def next(prompt, cache, index):
        logits = favour(token_id, batch_size_of(prompt))
        return logits, constant_hidden(prompt), cache

    return next


def target_next(prompt, cache, index):
    """A `next` predicting `cache[:, index]`: the cache holds the target.

    `index` is clamped because `ContrastiveSampler` looks one step ahead.
    """
    position = ops.minimum(index, LENGTH - 1)
    logits = favour(cache[:, position], batch_size_of(prompt))
    return logits, constant_hidden(prompt), cache


def logits_next(logits):
    """A `next` returning the same `(vocab,)` logits for every row."""
    logits = np.asarray(logits, "float32")

    def next(prompt, cache, index):
        batch_size = batch_size_of(prompt)
        return (
            ops.broadcast_to(logits, (batch_size, logits.shape[-1])),
            constant_hidden(prompt),
            cache,
        )

    return next


class BigramModel:
    """A toy model whose logits depend on the two previous tokens.

    `table_next` reads them from the prompt; `cache_next` reads them from a
    `(batch, length)` token-history cache that it writes itself (in place on
    torch, like a real KV cache), so both agree only if samplers thread the
    cache correctly.
    """

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.logits = rng.normal(size=(VOCAB_SIZE, VOCAB_SIZE)) * 3
        self.logits = self.logits.astype("float32")
        self.embeddings = rng.normal(size=(VOCAB_SIZE, HIDDEN_DIM))
        self.embeddings = self.embeddings.astype("float32")

    def _outputs(self, previous, before_previous):
        context = (previous + before_previous) % VOCAB_SIZE
        logits = ops.take(self.logits, context, axis=0)
        hidden = ops.take(self.embeddings, previous, axis=0)
        return logits, hidden

    def table_next(self, prompt, cache, index):
        logits, hidden = self._outputs(
            prompt[:, index - 1], prompt[:, index - 2]
        )
        return logits, hidden, cache

    def cache_next(self, prompt, cache, index):
        (history,) = cache
        previous = prompt[:, index - 1]
        if keras.config.backend() == "torch":
            history[:, index - 1] = previous
        else:
            history = ops.slice_update(
                history, [0, index - 1], previous[:, None]
            )
        logits, hidden = self._outputs(previous, history[:, index - 2])
        return logits, hidden, (history,)

    def greedy(self, prompt, index):
        """Reference greedy decoding from `index`, in numpy."""
        output = np.array(prompt)
        for i in range(index, output.shape[1]):
            context = (output[:, i - 1] + output[:, i - 2]) % VOCAB_SIZE
            output[:, i] = np.argmax(self.logits[context], axis=-1)
        return output

    def hidden_states(self, prompt):
        return ops.take(self.embeddings, prompt, axis=0)
