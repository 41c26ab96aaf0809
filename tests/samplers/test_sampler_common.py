"""Behaviour every sampler shares (keras_hub's per-sampler tests, plus
masking, logits processors, padding and cache threading)."""

import keras
import numpy as np
import pytest
from keras import ops

from mistral_hub import samplers
from tests.samplers.helpers import HIDDEN_DIM
from tests.samplers.helpers import LENGTH
from tests.samplers.helpers import VOCAB_SIZE
from tests.samplers.helpers import BigramModel
from tests.samplers.helpers import call_sampler
from tests.samplers.helpers import favour
from tests.samplers.helpers import favour_next
from tests.samplers.helpers import ids
from tests.samplers.helpers import target_next
from tests.samplers.helpers import text

SAMPLERS = {
    "greedy": lambda: samplers.GreedySampler(),
    "top_k": lambda: samplers.TopKSampler(k=5, seed=1),
    "top_p": lambda: samplers.TopPSampler(p=0.1, seed=1),
    "random": lambda: samplers.RandomSampler(seed=1),
    "beam": lambda: samplers.BeamSampler(num_beams=5),
    "contrastive": lambda: samplers.ContrastiveSampler(k=5, alpha=0.6),
}


# One sampler per decoding loop (the stochastic samplers share the base
# sampler's loop with greedy), for the loop-level behaviours.
LOOPS = ["greedy", "beam", "contrastive"]


@pytest.fixture(params=list(SAMPLERS))
def sampler(request):
    return SAMPLERS[request.param]()


@pytest.fixture(params=LOOPS)
def loop_sampler(request):
    return SAMPLERS[request.param]()


def generate(sampler, next, compiled, prompt, **kwargs):
    """Runs `sampler`, giving `ContrastiveSampler` constant hidden states."""
    if isinstance(sampler, samplers.ContrastiveSampler):
        kwargs.setdefault(
            "hidden_states", np.ones(prompt.shape + (HIDDEN_DIM,), "float32")
        )
    return call_sampler(sampler, next, compiled, prompt=prompt, **kwargs)


def test_stateless_call(sampler, compiled):
    output = generate(
        sampler, favour_next(0), compiled, ids("z" * LENGTH), index=5
    )
    assert text(output) == ["zzzzzaaaaaaa"]


def test_stateful_call(sampler, compiled):
    output = generate(
        sampler,
        target_next,
        compiled,
        ids("z" * LENGTH),
        cache=ids("sequentially"),
    )
    assert text(output) == ["sequentially"]


def test_early_stopping(sampler, compiled):
    output = generate(
        sampler,
        target_next,
        compiled,
        ids("z" * LENGTH),
        cache=ids("sequentially"),
        stop_token_ids=ids("t")[0].tolist(),
    )
    assert text(output) == ["sequentzzzzz"]


def test_multitoken_early_stopping(loop_sampler, compiled):
    # Row 1 stops at "t", one step before row 0 stops at "n"; meanwhile row
    # 1 gets the pad id 0 ("a").
    output = generate(
        loop_sampler,
        target_next,
        compiled,
        ids("z" * LENGTH, "z" * LENGTH),
        cache=ids("sequentially", "sequtxxxxxxx"),
        stop_token_ids=tuple(ids("tn")[0].tolist()),
    )
    assert text(output) == ["sequenzzzzzz", "sequtazzzzzz"]


def test_mask_keeps_prompt_tokens(loop_sampler, compiled):
    # Stop tokens inside a row's prompt do not finish it.
    prompt = ids("atzzzzzzzzzz", "atttzzzzzzzz")
    output = generate(
        loop_sampler,
        favour_next(ids("y")[0, 0]),
        compiled,
        prompt,
        index=2,
        mask=prompt != ids("z"),
        stop_token_ids=tuple(ids("t")[0].tolist()),
    )
    assert text(output) == ["atyyyyyyyyyy", "atttyyyyyyyy"]


def test_logits_processor_gets_prompt_and_index(loop_sampler, compiled):
    def spell_alphabet(logits, prompt, index):
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
        previous = prompt[:, index - 1]
        return favour((previous + 1) % VOCAB_SIZE, ops.shape(prompt)[0])

    output = generate(
        loop_sampler,
        favour_next(0),
        compiled,
        ids("a" * LENGTH),
        index=1,
        logits_processor=spell_alphabet,
    )
    assert text(output) == ["abcdefghijkl"]


@pytest.mark.parametrize("name", ["greedy", "beam"])
def test_index_at_end_returns_prompt(name, compiled):
    sampler = SAMPLERS[name]()
    prompt = ids("abcdefghijkl")
    output = generate(sampler, favour_next(0), compiled, prompt, index=LENGTH)
    np.testing.assert_array_equal(output, prompt)


@pytest.mark.parametrize("name", ["greedy", "beam", "contrastive"])
def test_cache_is_threaded_through_next(name, compiled):
    sampler = SAMPLERS[name]()
    # The cache-based model matches the prompt-based one only if the sampler
    # hands each `next` call the cache of the right sequence.
    model = BigramModel()
    prompt = ids("ab" + "z" * (LENGTH - 2), "cd" + "z" * (LENGTH - 2))
    kwargs = dict(index=2, seed=np.array([3, 4], "int32"))
    if isinstance(sampler, samplers.ContrastiveSampler):
        kwargs["hidden_states"] = ops.convert_to_numpy(
            model.hidden_states(prompt)
        )
    expected = generate(
        sampler, model.table_next, compiled, prompt, **kwargs
    )
    output = generate(
        sampler,
        model.cache_next,
        compiled,
        prompt,
        cache=(np.array(prompt),),
        **kwargs,
    )
    np.testing.assert_array_equal(output, expected)
    assert text(output)[0].startswith("ab")


def test_temperature_must_be_positive():
    for name in ("greedy", "top_k", "top_p", "random", "beam", "contrastive"):
        with pytest.raises(ValueError, match="`temperature`"):
            samplers.get(name).__class__(temperature=0.0)


def test_seed_must_be_an_int():
    with pytest.raises(ValueError, match="`seed`"):
        samplers.TopKSampler(seed="1")
