"""Top-p (nucleus) sampling."""

import keras
from keras import ops

from mistral_hub.samplers import stateless_random
from mistral_hub.samplers.sampler import Sampler
from mistral_hub.samplers.sampler import check_number
from mistral_hub.samplers.sampler import check_positive_int


@keras.saving.register_keras_serializable(package="mistral_hub")
class TopPSampler(Sampler):
    """Samples the next token from the smallest set holding mass `p`.

    Tokens are sorted by probability and kept while the mass of the tokens
    before them is below `p` (so the most probable token is always kept);
    one token is drawn from the renormalised kept set.

    Args:
        p: float in `(0, 1]`, the probability mass of the nucleus. Defaults
            to `0.1`.
        k: int >= 1 or `None`. If set, only the `k` most probable tokens are
            sorted and considered, which is much faster for large
            vocabularies. Defaults to `None`.
        seed: int or `None`. Source of per-call seeds when none is passed to
            `__call__`, see `Sampler`. Defaults to `None`.
        **kwargs: `temperature`, see `Sampler`.

    Example:

    ```python
    import keras
    import numpy as np
    from mistral_hub.samplers import TopPSampler

    def next(prompt, cache, index):
        # Ids are progressively less likely.
        logits = keras.ops.tile(-keras.ops.arange(10.0)[None], (2, 1))
        return logits, None, cache

    prompt = keras.ops.zeros((2, 6), dtype="int32")
    sampler = TopPSampler(p=0.9, k=5)
    sampler(next, prompt, index=1, seed=np.array([0, 42], "int32"))
    ```
    """

    def __init__(self, p=0.1, k=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        check_number("p", p, 0, 1, low_inclusive=False)
        if k is not None:
            check_positive_int("k", k)
        self.p = p
        self.k = k

    def get_next_token(self, probabilities, seed):
        vocabulary_size = probabilities.shape[-1]
        cutoff = vocabulary_size if self.k is None else min(self.k, vocabulary_size)
        sorted_probabilities, sorted_ids = ops.top_k(
            probabilities, k=cutoff, sorted=True
        )
        mass_before = ops.cumsum(sorted_probabilities, axis=-1)
        # Shift right by one so each token sees the mass strictly before it.
        mass_before = ops.concatenate(
            [ops.zeros_like(mass_before[:, :1]), mass_before[:, :-1]], axis=-1
        )
        kept = ops.where(
            mass_before < self.p,
            sorted_probabilities,
            ops.zeros_like(sorted_probabilities),
        )
        choice = stateless_random.categorical(ops.log(kept), seed)
        token = ops.take_along_axis(sorted_ids, choice[:, None], axis=-1)
        return ops.cast(ops.squeeze(token, axis=-1), "int32")

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p, "k": self.k})
        return config
