import numpy as np
import pytest
from keras import ops

from mistral_hub import samplers
from tests.samplers.helpers import LENGTH
from tests.samplers.helpers import VOCAB_SIZE
from tests.samplers.helpers import BigramModel
from tests.samplers.helpers import call_sampler
from tests.samplers.helpers import ids
from tests.samplers.helpers import text


def one_hot_hidden_next(logits):
    """A `next` with fixed logits whose hidden state is the fed token."""
    logits = np.asarray(logits, "float32")

    def next(prompt, cache, index):
        batch_size = ops.shape(prompt)[0]
        hidden = ops.one_hot(prompt[:, index - 1], VOCAB_SIZE)
        logits_ = ops.broadcast_to(logits, (batch_size, VOCAB_SIZE))
        return logits_, hidden, cache

    return next


def one_hot_hidden_states(prompt):
    return np.eye(VOCAB_SIZE, dtype="float32")[prompt]


def test_outputs_in_top_k(compiled):
    model = BigramModel()
    prompt = np.zeros((16, LENGTH), "int32")
    prompt[:, 1] = np.arange(16)
    output = call_sampler(
        samplers.ContrastiveSampler(k=3, alpha=0.9),
        model.table_next,
        compiled,
        prompt=prompt,
        index=2,
        hidden_states=ops.convert_to_numpy(model.hidden_states(prompt)),
    )
    for row in output:
        for i in range(2, LENGTH):
            context = (row[i - 1] + row[i - 2]) % VOCAB_SIZE
            top_3 = np.argsort(-model.logits[context])[:3]
            assert row[i] in top_3


def test_alpha_penalty(compiled):
    # "a" is most likely but already in the context; the penalty picks "b".
    logits = np.zeros(VOCAB_SIZE)
    logits[:2] = [3.0, 2.0]
    prompt = ids("aaaaazzzzzzz")
    penalised = call_sampler(
        samplers.ContrastiveSampler(k=5, alpha=0.6),
        one_hot_hidden_next(logits),
        compiled,
        prompt=prompt,
        index=5,
        hidden_states=one_hot_hidden_states(prompt),
    )
    # Then every seen token is penalised: a fresh (zero-logit) one wins.
    assert text(penalised)[0][:6] == "aaaaab"
    assert text(penalised)[0][6] not in "ab"


def test_zero_alpha_is_greedy(compiled):
    model = BigramModel(seed=2)
    prompt = ids("ab" + "z" * (LENGTH - 2), "cd" + "z" * (LENGTH - 2))
    output = call_sampler(
        samplers.ContrastiveSampler(alpha=0.0),
        model.table_next,
        compiled,
        prompt=prompt,
        index=2,
        hidden_states=ops.convert_to_numpy(model.hidden_states(prompt)),
    )
    np.testing.assert_array_equal(output, model.greedy(prompt, 2))


def test_requires_hidden_states():
    with pytest.raises(ValueError, match="hidden_states"):
        samplers.ContrastiveSampler()(
            BigramModel().table_next, ids("abzz"), index=2
        )


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"alpha": 1.5}, {"alpha": -0.1}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match=f"`{next(iter(kwargs))}`"):
        samplers.ContrastiveSampler(**kwargs)
