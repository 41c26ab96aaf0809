"""Contrastive search."""

import keras
from keras import ops
from keras import tree

from mistral_hub.samplers.sampler import Sampler
from mistral_hub.samplers.sampler import check_number
from mistral_hub.samplers.sampler import check_positive_int
from mistral_hub.utils.tensor_utils import repeat_rows


@keras.saving.register_keras_serializable(package="mistral_hub")
class ContrastiveSampler(Sampler):
    """Contrastive search (Su et al., 2022).

    Each step runs the model on the `k` most probable candidate tokens and
    picks the one maximising
    `(1 - alpha) * probability - alpha * max_similarity`, where
    `max_similarity` is the largest cosine similarity between the
    candidate's hidden state and the hidden states of all earlier positions.
    This discourages the degenerate repetition of greedy search.

    Requires `hidden_states`, the `(batch, length, hidden)` hidden states of
    the prompt, in `__call__`. Deterministic: `seed` is accepted for a
    uniform constructor and ignored.

    Args:
        k: int >= 1, the number of candidate tokens per step. Defaults to
            `5`.
        alpha: float in `[0, 1]`, the weight of the similarity penalty;
            `0` is greedy search. Defaults to `0.6`.
        seed: Ignored, see above. Defaults to `None`.
        **kwargs: `temperature`, see `Sampler`.

    Example:

    ```python
    import keras
    from mistral_hub.samplers import ContrastiveSampler

    embeddings = keras.random.normal((10, 4), seed=0)

    def next(prompt, cache, index):
        # A toy model whose hidden state embeds the last token.
        hidden = keras.ops.take(embeddings, prompt[:, index - 1], axis=0)
        batch_size = keras.ops.shape(prompt)[0]
        logits = keras.ops.tile(-keras.ops.arange(10.0)[None], (batch_size, 1))
        return logits, hidden, cache

    prompt = keras.ops.zeros((2, 6), dtype="int32")
    hidden_states = keras.ops.zeros((2, 6, 4))
    sampler = ContrastiveSampler(k=3, alpha=0.6)
    sampler(next, prompt, index=1, hidden_states=hidden_states)
    ```
    """

    def __init__(self, k=5, alpha=0.6, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        check_positive_int("k", k)
        check_number("alpha", alpha, 0, 1, low_inclusive=True)
        self.k = k
        self.alpha = alpha

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
        if hidden_states is None:
            raise ValueError(
                "`ContrastiveSampler` requires `hidden_states`, the "
                "(batch, length, hidden) hidden states of the prompt. "
                "Received: hidden_states=None"
            )
        k = self.k
        prompt, cache, index, mask, done = self.prepare_loop_inputs(
            prompt, cache, index, mask
        )
        hidden_states = ops.convert_to_tensor(hidden_states)
        batch_size, length = ops.shape(prompt)
        positions = ops.arange(length, dtype="int32")
        row_starts = ops.arange(batch_size, dtype="int32") * k
        logits, _, cache = next(prompt, cache, index)

        def expand(x):
            return repeat_rows(x, k)

        def cond(prompt, cache, index, logits, hidden_states, done):
            return self.should_continue(index, length, done)

        def body(prompt, cache, index, logits, hidden_states, done):
            logits = self.process_logits(
                logits, prompt, index, logits_processor
            )
            probabilities = self.compute_probabilities(logits)
            top_probabilities, top_ids = ops.top_k(
                probabilities, k=k, sorted=False
            )
            # Inside a row's prompt every candidate is the prompt token.
            candidates = ops.where(
                mask[:, index][:, None],
                prompt[:, index][:, None],
                ops.cast(top_ids, prompt.dtype),
            )
            beams = ops.slice_update(
                expand(prompt), [0, index], ops.reshape(candidates, (-1, 1))
            )
            beam_logits, beam_hidden, beam_cache = next(
                beams, tree.map_structure(expand, cache), index + 1
            )
            similarity = cosine_similarity(
                ops.reshape(beam_hidden, (batch_size, k, -1)), hidden_states
            )
            # Only positions before `index` hold context hidden states.
            similarity = ops.where(positions < index, similarity, -1.0)
            penalty = ops.max(similarity, axis=-1)
            scores = (1 - self.alpha) * top_probabilities - self.alpha * penalty
            best = ops.cast(ops.argmax(scores, axis=-1), "int32")
            token = ops.take_along_axis(candidates, best[:, None], axis=1)[:, 0]
            prompt, done = self.write_token(
                prompt, index, token, mask, done, stop_token_ids, stop_condition
            )

            def pick(x):
                return ops.take(x, row_starts + best, axis=0)

            hidden_states = ops.slice_update(
                hidden_states,
                [0, index, 0],
                ops.cast(pick(beam_hidden), hidden_states.dtype)[:, None, :],
            )
            cache = tree.map_structure(pick, beam_cache)
            logits = pick(beam_logits)
            return prompt, cache, index + 1, logits, hidden_states, done

        prompt, *_ = ops.while_loop(
            cond, body, (prompt, cache, index, logits, hidden_states, done)
        )
        return prompt

    def get_config(self):
        config = super().get_config()
        config.update({"k": self.k, "alpha": self.alpha})
        return config


def cosine_similarity(candidates, context):
    """Cosine similarity of `(b, k, h)` candidates with `(b, t, h)` context.

    Returns:
        A `(b, k, t)` float32 tensor; zero vectors have similarity 0.
    """

    def unit(x):
        x = ops.cast(x, "float32")
        norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
        return x / ops.maximum(norm, 1e-12)

    return ops.einsum("bkh,bth->bkt", unit(candidates), unit(context))
