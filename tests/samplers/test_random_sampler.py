import numpy as np

from mistral_hub import samplers
from tests.samplers.helpers import LENGTH
from tests.samplers.helpers import VOCAB_SIZE
from tests.samplers.helpers import call_sampler
from tests.samplers.helpers import logits_next

PROBABILITIES = np.array([0.5, 0.3, 0.2])


def test_frequencies_follow_probabilities(compiled):
    logits = np.full(VOCAB_SIZE, -1e9)
    logits[:3] = np.log(PROBABILITIES)
    output = call_sampler(
        samplers.RandomSampler(),
        logits_next(logits),
        compiled,
        prompt=np.zeros((200, LENGTH), "int32"),
        seed=np.array([5, 6], "int32"),
    )
    frequencies = np.bincount(output.ravel(), minlength=VOCAB_SIZE)
    frequencies = frequencies / output.size
    np.testing.assert_allclose(frequencies[:3], PROBABILITIES, atol=0.04)
    assert frequencies[3:].sum() == 0


def test_temperature(compiled):
    logits = np.arange(VOCAB_SIZE, 0, -1, dtype="float32")
    output = call_sampler(
        samplers.RandomSampler(temperature=1e-9),
        logits_next(logits),
        compiled,
        prompt=np.full((8, LENGTH), VOCAB_SIZE - 1, "int32"),
        index=5,
    )
    assert (output[:, 5:] == 0).all()
