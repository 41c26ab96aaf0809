"""Stateless seeding of the stochastic samplers."""

import numpy as np
import pytest

from mistral_hub import samplers
from tests.samplers.helpers import LENGTH
from tests.samplers.helpers import VOCAB_SIZE
from tests.samplers.helpers import compile_sampler
from tests.samplers.helpers import logits_next

STOCHASTIC = {
    "top_k": lambda seed=None: samplers.TopKSampler(k=20, seed=seed),
    "top_p": lambda seed=None: samplers.TopPSampler(p=0.9, k=20, seed=seed),
    "random": lambda seed=None: samplers.RandomSampler(seed=seed),
}
UNIFORM_NEXT = logits_next(np.zeros(VOCAB_SIZE))
PROMPT = np.zeros((4, LENGTH), "int32")


@pytest.fixture(params=list(STOCHASTIC))
def make_sampler(request):
    return STOCHASTIC[request.param]


def seed(*values):
    return np.array(values, "int32")


def test_seed_determines_output(make_sampler):
    sample = compile_sampler(make_sampler(), UNIFORM_NEXT, compiled=True)
    first = sample(prompt=PROMPT, index=1, seed=seed(1, 2))
    np.testing.assert_array_equal(
        first, sample(prompt=PROMPT, index=1, seed=seed(1, 2))
    )
    # The eager path draws the same noise as the compiled one.
    eager = compile_sampler(make_sampler(), UNIFORM_NEXT, compiled=False)
    np.testing.assert_array_equal(
        first, eager(prompt=PROMPT, index=1, seed=seed(1, 2))
    )
    assert not np.array_equal(
        first, sample(prompt=PROMPT, index=1, seed=seed(1, 3))
    )
    # Every step draws fresh noise, so rows are not constant.
    assert len(np.unique(first[:, 1:])) > 5


def test_constructor_seed_drives_unseeded_calls():
    def sample(sampler):
        return compile_sampler(sampler, UNIFORM_NEXT, compiled=False)(
            prompt=PROMPT, index=1
        )

    sampler = samplers.RandomSampler(seed=7)
    first = sample(sampler)
    # Like a seed generator, a seeded sampler draws a new seed per call...
    assert not np.array_equal(first, sample(sampler))
    # ...and a sampler with the same seed repeats the sequence.
    np.testing.assert_array_equal(first, sample(samplers.RandomSampler(seed=7)))
