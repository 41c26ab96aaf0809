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
