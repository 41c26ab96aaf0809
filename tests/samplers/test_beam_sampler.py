import itertools

import numpy as np
import pytest

from mistral_hub import samplers
from tests.samplers.helpers import LENGTH
from tests.samplers.helpers import VOCAB_SIZE
from tests.samplers.helpers import BigramModel
from tests.samplers.helpers import call_sampler
from tests.samplers.helpers import ids


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def sequence_log_prob(model, sequence, start):
    """The bigram model's log probability of `sequence[start:]`."""
    log_probs = log_softmax(model.logits.astype("float64"))
    return sum(
        log_probs[(sequence[i - 1] + sequence[i - 2]) % VOCAB_SIZE][sequence[i]]
        for i in range(start, len(sequence))
    )


def test_return_all_beams(compiled):
    model = BigramModel()
    prompt = ids("ab" + "z" * (LENGTH - 2), "cd" + "z" * (LENGTH - 2))
    prompts, log_probs = call_sampler(
        samplers.BeamSampler(num_beams=5, return_all_beams=True),
        model.table_next,
        compiled,
        prompt=prompt,
        index=2,
    )
    assert prompts.shape == (2, 5, LENGTH)
    assert log_probs.shape == (2, 5)
    assert (np.diff(log_probs, axis=-1) <= 0).all()
    for row in range(2):
        assert len({tuple(beam) for beam in prompts[row]}) == 5
        for beam, log_prob in zip(prompts[row], log_probs[row]):
            np.testing.assert_array_equal(beam[:2], prompt[row, :2])
            expected = sequence_log_prob(model, beam, start=2)
            np.testing.assert_allclose(log_prob, expected, rtol=1e-4)


def test_enough_beams_search_exhaustively(compiled):
    # With one beam per vocabulary entry, two steps of beam search keep the
    # exact best 26 of all 26**2 continuations.
    model = BigramModel(seed=3)
    prompt = ids("abzz")
    prompts, log_probs = call_sampler(
        samplers.BeamSampler(num_beams=VOCAB_SIZE, return_all_beams=True),
        model.table_next,
        compiled,
        prompt=prompt,
        index=2,
    )
    scores = sorted(
        (
            sequence_log_prob(model, [0, 1, x, y], start=2)
            for x, y in itertools.product(range(VOCAB_SIZE), repeat=2)
        ),
        reverse=True,
    )
    np.testing.assert_allclose(log_probs[0], scores[:VOCAB_SIZE], rtol=1e-4)
    best = max(
        itertools.product(range(VOCAB_SIZE), repeat=2),
        key=lambda xy: sequence_log_prob(model, [0, 1, *xy], start=2),
    )
    assert tuple(prompts[0, 0, 2:]) == best


def test_one_beam_is_greedy(compiled):
    model = BigramModel(seed=1)
    prompt = ids("ab" + "z" * (LENGTH - 2), "cd" + "z" * (LENGTH - 2))
    output = call_sampler(
        samplers.BeamSampler(num_beams=1),
        model.table_next,
        compiled,
        prompt=prompt,
        index=2,
    )
    np.testing.assert_array_equal(output, model.greedy(prompt, 2))


@pytest.mark.parametrize("num_beams", [0, 1.5, None])
def test_invalid_num_beams(num_beams):
    with pytest.raises(ValueError, match="`num_beams`"):
        samplers.BeamSampler(num_beams=num_beams)
