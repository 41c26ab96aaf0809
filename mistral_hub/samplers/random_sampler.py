"""Ancestral sampling over the whole vocabulary."""

import keras
from keras import ops

from mistral_hub.samplers import stateless_random
from mistral_hub.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="mistral_hub")
class RandomSampler(Sampler):
    """Samples the next token from the full softmax distribution.

    Args:
        seed: int or `None`. Source of per-call seeds when none is passed to
            `__call__`, see `Sampler`. Defaults to `None`.
        **kwargs: `temperature`, see `Sampler`.

    Example:

    ```python
    import keras
    import numpy as np
    from mistral_hub.samplers import RandomSampler

    def next(prompt, cache, index):
        logits = keras.ops.zeros((2, 10))
        return logits, None, cache

    prompt = keras.ops.zeros((2, 6), dtype="int32")
    sampler = RandomSampler(temperature=0.7)
    sampler(next, prompt, index=1, seed=np.array([0, 42], "int32"))
    ```
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)

    def get_next_token(self, probabilities, seed):
        return stateless_random.categorical(ops.log(probabilities), seed)
