"""Base class of the autoregressive samplers."""

import inspect
import random

import keras
import numpy as np
from keras import ops

from mistral_hub.samplers import stateless_random
from mistral_hub.utils import validation

# Token written after a row has stopped; callers mask these positions out.
PAD_TOKEN_ID = 0


def check_positive_int(name, value):
    """Raises a `ValueError` naming `name` unless `value` is an int >= 1."""
    validation.check_positive_int(name, value)


def check_number(name, value, low, high, low_inclusive, high_inclusive=True):
    """Raises a `ValueError` naming `name` unless `value` is a finite number in the range."""
    validation.check_finite_float(
        name,
        value,
        low,
        None if high == float("inf") else high,
        include_low=low_inclusive,
        include_high=high_inclusive,
    )


class Sampler:
    """Base class of the autoregressive samplers.

    A sampler fills `prompt` one position at a time, from `index` until every
    row has produced a stop token or the sequence is full. Each step calls
    `next` for the logits of the position being filled, optionally rewrites
    them with `logits_processor`, turns them into probabilities with
    `compute_probabilities` and picks tokens with `get_next_token`.

    The whole loop is a pure function of its inputs: it runs eagerly on
    torch, inside `tf.function` on TensorFlow and inside `jax.jit` on JAX,
    and it never mutates a Keras variable. Randomness is stateless: a per-call
    `(2,)` seed is folded with the step index into a per-step seed.

    To write a custom sampler, override `get_next_token(probabilities, seed)`
    and draw randomness only through `mistral_hub.samplers.stateless_random`
    with the per-step `seed`. Samplers written for keras_hub work unchanged
    once they subclass this class: a `get_next_token(probabilities)`
    override is called without the seed, and the `keras.random.SeedGenerator`
    attributes it draws from then follow the per-call seed too.

    Args:
        temperature: float > 0. Logits are divided by it before the softmax;
            higher values give more diverse samples. Defaults to `1.0`.
        seed: int or `None`. Source of the per-call seed when `__call__` gets
            no `seed`: a sampler built with the same int produces the same
            sequence of outputs. With `None`, seeds come from OS entropy.
            Defaults to `None`.

    Call arguments:
        next: A function `next(prompt, cache, index)` returning
            `(logits, hidden_states, cache)`: the `(batch, vocab)` logits
            predicting position `index` (computed from the token at
            `index - 1`), the `(batch, hidden)` hidden state of that token
            and the updated cache.
        prompt: A `(batch, length)` int tensor of right-padded token ids.
        cache: An optional tuple of tensors (batch first) threaded through
            `next` and otherwise left untouched.
        index: Python int or 0-d int tensor, the first position to fill.
        mask: Optional `(batch, length)` bool tensor, `True` on real prompt
            tokens; those are kept instead of sampled (teacher forcing for the
            longer prompts of a batch).
        stop_token_ids: Optional tuple of ints. A row finishes once it
            generates one of them outside its prompt; later positions of that
            row are filled with the pad id 0. The loop ends once every row
            has finished.
        hidden_states: `(batch, length, hidden)` hidden states of the prompt;
            only `ContrastiveSampler` uses them.
        model: Accepted for keras_hub call compatibility and unused: `next`
            closes over the model's (possibly traced) weights.
        seed: Optional `(2,)` int tensor. With the same seed, a sampler gives
            the same output on a given backend.
        logits_processor: Optional callable
            `(logits, prompt, index) -> logits` applied to the float32 logits
            of every step before the temperature and softmax.
        stop_condition: Optional callable `(prompt, index) -> (batch,) bool`
            evaluated after writing position `index`; True finishes a row
            (outside its prompt), like generating a stop token. Used for
            stop strings.

    Returns:
        The `(batch, length)` completed prompt.

    Example:

    ```python
    import keras
    from mistral_hub.samplers import Sampler

    class SmallestIdSampler(Sampler):
        def get_next_token(self, probabilities, seed):
            # Always pick the smallest id with a probability above 1%.
            likely = keras.ops.cast(probabilities > 0.01, "int32")
            return keras.ops.cast(keras.ops.argmax(likely, axis=-1), "int32")

    def next(prompt, cache, index):
        logits = keras.ops.ones((2, 10))
        return logits, None, cache

    prompt = keras.ops.zeros((2, 6), dtype="int32")
    SmallestIdSampler()(next, prompt, index=1)
    ```
    """

    def __init__(self, temperature=1.0, seed=None):
        check_number("temperature", temperature, 0, float("inf"), False)
        validation.check_int("seed", seed, allow_none=True)
        self.temperature = temperature
        self.seed = seed
        self._seed_source = random.Random(seed)

    def __call__(
        self,
        next,
        prompt,
        cache=None,
        index=0,
        mask=None,
        stop_token_ids=None,
        hidden_states=None,
        model=None,
        seed=None,
        logits_processor=None,
        stop_condition=None,
    ):
        prompt, cache, index, mask, done = self.prepare_loop_inputs(
            prompt, cache, index, mask
        )
        seed = self.resolve_seed(seed)
        length = ops.shape(prompt)[1]
        get_next_token = self._seeded_get_next_token()

        def cond(prompt, cache, index, done):
            return self.should_continue(index, length, done)

        def body(prompt, cache, index, done):
            logits, _, cache = next(prompt, cache, index)
            logits = self.process_logits(
                logits, prompt, index, logits_processor
            )
            probabilities = self.compute_probabilities(logits)
            step_seed = stateless_random.fold_in(seed, index)
            token = get_next_token(probabilities, step_seed)
            prompt, done = self.write_token(
                prompt, index, token, mask, done, stop_token_ids, stop_condition
            )
            return prompt, cache, index + 1, done

        prompt, *_ = ops.while_loop(cond, body, (prompt, cache, index, done))
        return prompt

    def compute_probabilities(self, logits):
        """Returns `softmax(float32(logits) / temperature)`."""
        logits = ops.cast(logits, "float32")
        # Shifting the maximum to 0 before scaling keeps tiny temperatures
        # from overflowing `logits / temperature` to inf (and NaN after the
        # softmax); they then give the argmax.
        logits = logits - ops.max(logits, axis=-1, keepdims=True)
        return keras.activations.softmax(logits / self.temperature)

    def get_next_token(self, probabilities, seed):
        """Picks the next token of every row.

        Args:
            probabilities: A `(batch, vocab)` float32 tensor.
            seed: The stateless seed of this step, for
                `stateless_random.uniform` / `stateless_random.categorical`.

        Returns:
            A `(batch,)` int32 tensor of token ids.
        """
        raise NotImplementedError

    def _seeded_get_next_token(self):
        """Returns `get_next_token` as a function of `(probabilities, seed)`.

        Overrides written for keras_hub take only `probabilities` and draw
        from `keras.random.SeedGenerator` attributes. They are called without
        the seed, and their generators read a state derived from the step
        seed: a generator's own state cannot advance inside `jax.jit`, where
        every step and call would repeat the same draws.
        """
        method = self.get_next_token
        if _takes_two_arguments(method):
            return method
        generators = [
            value
            for value in vars(self).values()
            if isinstance(value, keras.random.SeedGenerator)
        ]

        def get_next_token(probabilities, seed):
            mapping = [
                (
                    generator.state,
                    stateless_random.seed_generator_state(
                        stateless_random.fold_in(seed, i), generator.state.dtype
                    ),
                )
                for i, generator in enumerate(generators)
            ]
            with keras.StatelessScope(state_mapping=mapping):
                return method(probabilities)

        return get_next_token

    def prepare_loop_inputs(self, prompt, cache, index, mask):
        """Normalises the call arguments into initial loop variables.

        Returns:
            `(prompt, cache, index, mask, done)`: `cache` is `()` when absent
            (`ops.while_loop` rejects `None`), `index` is an int32 scalar,
            `mask` is bool and `done` is an all-`False` `(batch,)` bool.
        """
        prompt = ops.convert_to_tensor(prompt)
        if mask is None:
            mask = ops.zeros_like(prompt, dtype="bool")
        else:
            mask = ops.cast(mask, "bool")
        cache = () if cache is None else cache
        index = ops.cast(index, "int32")
        done = ops.zeros((ops.shape(prompt)[0],), dtype="bool")
        return prompt, cache, index, mask, done

    def resolve_seed(self, seed):
        """Returns the backend seed of a call, drawing one if `seed` is None.

        The draw happens in Python, outside any compiled loop; under
        `jax.jit` or `tf.function` it is fixed at trace time, so compiled
        callers should pass `seed` explicitly.
        """
        if seed is None:
            seed = np.array(
                [self._seed_source.randrange(2**31) for _ in range(2)],
                dtype="int32",
            )
        return stateless_random.make_seed(seed)

    def should_continue(self, index, length, done):
        """Whether to fill position `index`: room is left and a row is live."""
        return ops.logical_and(
            index < length, ops.logical_not(ops.all(done))
        )

    def process_logits(self, logits, prompt, index, logits_processor):
        """Casts `logits` to float32 and applies `logits_processor`."""
        logits = ops.cast(logits, "float32")
        if logits_processor is not None:
            logits = logits_processor(logits, prompt, index)
            logits = ops.cast(logits, "float32")
        return logits

    def write_token(
        self, prompt, index, token, mask, done, stop_token_ids, stop_condition=None
    ):
        """Writes `token` at `index` and updates which rows have finished.

        Prompt tokens (`mask`) are kept, rows finished at an earlier step get
        `PAD_TOKEN_ID`, and a row finishes when it generates a stop token.

        Returns:
            `(prompt, done)`, both updated.
        """
        in_prompt = mask[:, index]
        token = ops.cast(token, prompt.dtype)
        written = ops.where(
            in_prompt,
            prompt[:, index],
            ops.where(done, ops.cast(PAD_TOKEN_ID, prompt.dtype), token),
        )
        prompt = ops.slice_update(prompt, [0, index], written[:, None])
        stopped = None
        if stop_token_ids:
            stopped = is_stop_token(token, stop_token_ids)
        if stop_condition is not None:
            matched = stop_condition(prompt, index)
            stopped = matched if stopped is None else ops.logical_or(stopped, matched)
        if stopped is not None:
            done = ops.logical_or(
                done, ops.logical_and(ops.logical_not(in_prompt), stopped)
            )
        return prompt, done

    def get_config(self):
        return {"temperature": self.temperature, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _takes_two_arguments(function):
    try:
        inspect.signature(function).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (a builtin): assume so
        pass
    return True


def is_stop_token(token, stop_token_ids):
    """Returns a `(batch,)` bool: whether each of `token` is a stop id."""
    stop_ids = ops.convert_to_tensor(list(stop_token_ids), dtype=token.dtype)
    return ops.any(ops.equal(token[:, None], stop_ids[None, :]), axis=-1)
