"""Greedy decoding."""

import keras
from keras import ops

from mistral_hub.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="mistral_hub")
class GreedySampler(Sampler):
    """Picks the most probable token at every step.

    Deterministic: `seed` is accepted for a uniform constructor and ignored,
    and `temperature` does not change the argmax.

    Args:
        **kwargs: `temperature` and `seed`, see `Sampler`.

    Example:

    ```python
    import keras
    from mistral_hub.samplers import GreedySampler

    def next(prompt, cache, index):
        # A toy model that always prefers token 3.
        logits = keras.ops.one_hot(keras.ops.full((2,), 3), 10)
        return logits, None, cache

    prompt = keras.ops.zeros((2, 6), dtype="int32")
    GreedySampler()(next, prompt, index=1)  # [[0, 3, 3, 3, 3, 3], ...]
    ```
    """

    def get_next_token(self, probabilities, seed):
        return ops.cast(ops.argmax(probabilities, axis=-1), "int32")
