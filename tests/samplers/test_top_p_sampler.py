import numpy as np
import pytest

from mistral_hub import samplers
from tests.samplers.helpers import LENGTH
from tests.samplers.helpers import VOCAB_SIZE
from tests.samplers.helpers import call_sampler
from tests.samplers.helpers import logits_next

# Probabilities 0.4, 0.3, 0.2, 0.1 for ids 0-3 and ~0 elsewhere.
FOUR_TOKENS_NEXT = logits_next(
    np.log([0.4, 0.3, 0.2, 0.1] + [1e-30] * (VOCAB_SIZE - 4))
)
SEED = np.array([0, 1], "int32")


def sample(sampler, compiled, next=FOUR_TOKENS_NEXT, **kwargs):
    return call_sampler(
        sampler,
        next,
        compiled,
        prompt=np.full((32, LENGTH), VOCAB_SIZE - 1, "int32"),
        **kwargs,
    )


def test_outputs_in_top_p(compiled):
    # The smallest set reaching mass 0.6 is {0, 1} (0.4 alone is below).
    output = sample(samplers.TopPSampler(p=0.6), compiled, seed=SEED)
    assert set(np.unique(output)) == {0, 1}


def test_only_sample_from_top_k_tokens(compiled):
    output = sample(samplers.TopPSampler(p=1.0, k=2), compiled, seed=SEED)
    assert set(np.unique(output)) == {0, 1}


def test_temperature(compiled):
    next = logits_next(np.arange(VOCAB_SIZE, 0, -1, dtype="float32"))
    output = sample(
        samplers.TopPSampler(p=0.5, temperature=1e-9), compiled, next, index=5
    )
    assert (output[:, 5:] == 0).all()


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, "0.5"])
def test_invalid_p(p):
    with pytest.raises(ValueError, match="`p`"):
        samplers.TopPSampler(p=p)


def test_invalid_k():
    with pytest.raises(ValueError, match="`k`"):
        samplers.TopPSampler(k=0)
