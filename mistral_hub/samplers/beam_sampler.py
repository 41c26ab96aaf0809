"""Beam search."""

import keras
from keras import ops
from keras import tree

from mistral_hub.samplers.sampler import PAD_TOKEN_ID
from mistral_hub.samplers.sampler import Sampler
from mistral_hub.samplers.sampler import check_positive_int
from mistral_hub.samplers.sampler import is_stop_token
from mistral_hub.utils.tensor_utils import repeat_rows

# Initial score of the placeholder beams: low enough never to beat a real
# beam, finite so that adding log probabilities cannot produce NaN.
_DEAD_BEAM_SCORE = -1e9


@keras.saving.register_keras_serializable(package="mistral_hub")
class BeamSampler(Sampler):
    """Keeps the `num_beams` most likely sequences at every step.

    Each step extends every beam with every token and keeps the `num_beams`
    candidates of highest total log probability; the cache is repeated per
    beam and reordered with the beams. A beam that generates a stop token is
    finished: its score is frozen and it is extended only with the pad id 0.
    Prompt tokens under `mask` are forced and do not add to the score.

    Deterministic: `seed` is accepted for a uniform constructor and ignored.

    Args:
        num_beams: int >= 1, the number of beams. With `1` this is greedy
            search. Defaults to `5`.
        return_all_beams: bool. If `True`, `__call__` returns
            `(prompts, log_probs)` with shapes `(batch, num_beams, length)`
            and `(batch, num_beams)`, sorted by decreasing log probability.
            Otherwise it returns the best `(batch, length)` sequences.
            Defaults to `False`.
        **kwargs: `temperature` and `seed`, see `Sampler`.

    Example:

    ```python
    import keras
    from mistral_hub.samplers import BeamSampler

    def next(prompt, cache, index):
        # Ids are progressively less likely.
        logits = keras.ops.tile(-keras.ops.arange(10.0)[None], (6, 1))
        return logits, None, cache

    prompt = keras.ops.zeros((2, 6), dtype="int32")
    sampler = BeamSampler(num_beams=3, return_all_beams=True)
    prompts, log_probs = sampler(next, prompt, index=4)
    prompts.shape, log_probs.shape  # (2, 3, 6), (2, 3)
    ```
    """

    def __init__(self, num_beams=5, return_all_beams=False, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_beams", num_beams)
        self.num_beams = num_beams
        self.return_all_beams = bool(return_all_beams)

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
    ):
        num_beams = self.num_beams
        prompt, cache, index, mask, _ = self.prepare_loop_inputs(
            prompt, cache, index, mask
        )
        batch_size, length = ops.shape(prompt)

        def expand(x):
            return repeat_rows(x, num_beams)

        # Beams of a row are contiguous: flat beam `b * num_beams + j`.
        prompt, mask = expand(prompt), expand(mask)
        cache = tree.map_structure(expand, cache)
        done = ops.zeros((batch_size * num_beams,), dtype="bool")
        # Only the first beam of each row is real at the start; the others
        # would otherwise duplicate it.
        log_probs = ops.tile(
            ops.convert_to_tensor(
                [0.0] + [_DEAD_BEAM_SCORE] * (num_beams - 1), dtype="float32"
            ),
            (batch_size,),
        )
        row_starts = ops.arange(batch_size, dtype="int32")[:, None] * num_beams

        def unflatten(x):
            return ops.reshape(x, (-1, num_beams) + tuple(ops.shape(x)[1:]))

        def cond(prompt, cache, index, log_probs, done):
            if self.return_all_beams:
                finished = done
            else:
                # Scores only decrease, so once the best beam of a row is
                # finished no live beam can overtake it.
                best = ops.argmax(unflatten(log_probs), axis=-1)[:, None]
                finished = ops.take_along_axis(unflatten(done), best, axis=-1)
            return self.should_continue(index, length, finished)

        def body(prompt, cache, index, log_probs, done):
            logits, _, cache = next(prompt, cache, index)
            logits = self.process_logits(
                logits, prompt, index, logits_processor
            )
            vocab_size = ops.shape(logits)[-1]
            step_log_probs = ops.log(self.compute_probabilities(logits))
            # Prompt positions and finished beams have a single allowed
            # token, with log probability 0.
            in_prompt = mask[:, index]
            forced = ops.logical_or(in_prompt, done)
            pad = ops.cast(PAD_TOKEN_ID, prompt.dtype)
            forced_token = ops.where(in_prompt, prompt[:, index], pad)
            forced_log_probs = ops.where(
                ops.one_hot(forced_token, vocab_size) > 0, 0.0, float("-inf")
            )
            step_log_probs = ops.where(
                forced[:, None], forced_log_probs, step_log_probs
            )
            scores = ops.reshape(
                log_probs[:, None] + step_log_probs,
                (-1, num_beams * vocab_size),
            )
            top_scores, top_ids = ops.top_k(scores, k=num_beams, sorted=True)
            top_ids = ops.cast(top_ids, "int32")
            parents = ops.reshape(row_starts + top_ids // vocab_size, (-1,))
            token = ops.reshape(top_ids % vocab_size, (-1,))
            token = ops.cast(token, prompt.dtype)

            def reorder(x):
                return ops.take(x, parents, axis=0)

            prompt, done = reorder(prompt), reorder(done)
            cache = tree.map_structure(reorder, cache)
            # Rows' beams share their mask, so `in_prompt` needs no reorder;
            # `token` already holds the forced prompt or pad tokens.
            prompt = ops.slice_update(prompt, [0, index], token[:, None])
            if stop_token_ids:
                stopped = is_stop_token(token, stop_token_ids)
                done = ops.logical_or(
                    done, ops.logical_and(ops.logical_not(in_prompt), stopped)
                )
            log_probs = ops.reshape(top_scores, (-1,))
            return prompt, cache, index + 1, log_probs, done

        prompt, _, _, log_probs, _ = ops.while_loop(
            cond, body, (prompt, cache, index, log_probs, done)
        )
        prompts, log_probs = unflatten(prompt), unflatten(log_probs)
        order = ops.argsort(-log_probs, axis=-1)
        prompts = ops.take_along_axis(prompts, order[:, :, None], axis=1)
        if self.return_all_beams:
            return prompts, ops.take_along_axis(log_probs, order, axis=1)
        return prompts[:, 0]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_beams": self.num_beams,
                "return_all_beams": self.return_all_beams,
            }
        )
        return config
