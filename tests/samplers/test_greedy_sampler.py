import numpy as np

from mistral_hub import samplers
from tests.samplers.helpers import LENGTH
from tests.samplers.helpers import BigramModel
from tests.samplers.helpers import call_sampler
from tests.samplers.helpers import ids


def test_is_greedy(compiled):
    model = BigramModel()
    prompt = ids("ab" + "z" * (LENGTH - 2), "cd" + "z" * (LENGTH - 2))
    output = call_sampler(
        samplers.GreedySampler(),
        model.table_next,
        compiled,
        prompt=prompt,
        index=2,
    )
    np.testing.assert_array_equal(output, model.greedy(prompt, 2))
