import numpy as np
import pytest

from mistral_hub import samplers
from tests.samplers.helpers import LENGTH
from tests.samplers.helpers import VOCAB_SIZE
from tests.samplers.helpers import call_sampler
from tests.samplers.helpers import logits_next

# Each id is progressively less likely.
DECREASING_NEXT = logits_next(np.arange(VOCAB_SIZE, 0, -1) / 4.0)


def test_outputs_in_top_k(compiled):
    output = call_sampler(
        samplers.TopKSampler(k=5),
        DECREASING_NEXT,
        compiled,
        prompt=np.zeros((32, LENGTH), "int32"),
        seed=np.array([0, 1], "int32"),
    )
    assert set(np.unique(output)) == set(range(5))


@pytest.mark.parametrize("k", [0, -1, 2.5, None, True])
def test_invalid_k(k):
    with pytest.raises(ValueError, match="`k`"):
        samplers.TopKSampler(k=k)


@pytest.mark.parametrize("sampler_class", [samplers.TopKSampler, samplers.TopPSampler])
def test_k_above_the_vocabulary_keeps_every_token(sampler_class, compiled):
    # transformers' TopKLogitsWarper clamps `top_k` to the vocabulary size:
    # the draws equal those with `k` = vocabulary size.
    kwargs = {"p": 1.0} if sampler_class is samplers.TopPSampler else {}

    def draw(k):
        return call_sampler(
            sampler_class(k=k, **kwargs),
            DECREASING_NEXT,
            compiled,
            prompt=np.zeros((8, LENGTH), "int32"),
            seed=np.array([3, 4], "int32"),
        )

    np.testing.assert_array_equal(draw(10**9), draw(VOCAB_SIZE))


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), 0, -1.0, "1"])
def test_invalid_temperature(temperature):
    with pytest.raises(ValueError, match="`temperature`"):
        samplers.TopKSampler(temperature=temperature)
