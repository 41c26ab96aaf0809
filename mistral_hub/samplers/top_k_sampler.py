"""Top-k sampling."""

import keras
from keras import ops

from mistral_hub.samplers import stateless_random
from mistral_hub.samplers.sampler import Sampler
from mistral_hub.samplers.sampler import check_positive_int


@keras.saving.register_keras_serializable(package="mistral_hub")
class TopKSampler(Sampler):
    """Samples the next token among the `k` most probable ones.

    The top `k` probabilities are renormalised and one token is drawn from
    them.

    Args:
        k: int >= 1, the number of candidate tokens. Defaults to `5`.
        seed: int or `None`. Source of per-call seeds when none is passed to
            `__call__`, see `Sampler`. Defaults to `None`.
        **kwargs: `temperature`, see `Sampler`.

    Example:

    ```python
    import keras
    import numpy as np
    from mistral_hub.samplers import TopKSampler

    def next(prompt, cache, index):
        # Ids are progressively less likely.
        logits = keras.ops.tile(-keras.ops.arange(10.0)[None], (2, 1))
        return logits, None, cache

    prompt = keras.ops.zeros((2, 6), dtype="int32")
    sampler = TopKSampler(k=3, temperature=0.7)
    sampler(next, prompt, index=1, seed=np.array([0, 42], "int32"))
    ```
    """

    def __init__(self, k=5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        check_positive_int("k", k)
        self.k = k

    def get_next_token(self, probabilities, seed):
        # A `k` above the vocabulary keeps every token, as in transformers.
        k = min(self.k, probabilities.shape[-1])
        top_probabilities, top_ids = ops.top_k(probabilities, k=k, sorted=False)
        choice = stateless_random.categorical(ops.log(top_probabilities), seed)
        token = ops.take_along_axis(top_ids, choice[:, None], axis=-1)
        return ops.cast(ops.squeeze(token, axis=-1), "int32")

    def get_config(self):
        config = super().get_config()
        config["k"] = self.k
        return config
