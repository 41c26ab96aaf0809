"""Every sampler through `generate()` on real model shapes.

On the shipped bfloat16 demo preset (4 query / 2 key-value heads, batch of
one, where beam and contrastive search expand the KV cache) and on tiny
random models with odd head counts, against transformers' beam and greedy
search and keras_hub's own sampler loops run over the same model.
"""

import functools

import keras_hub
import numpy as np
import pytest
import torch
from keras import ops

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.samplers import BeamSampler
from mistral_hub.samplers import ContrastiveSampler
from mistral_hub.samplers import GreedySampler
from mistral_hub.samplers import RandomSampler
from mistral_hub.samplers import Sampler
from mistral_hub.samplers import TopKSampler
from mistral_hub.samplers import TopPSampler
from tests.models.mistral.hf_reference import hf_forward
from tests.models.mistral.hf_reference import keras_backbone_from_hf
from tests.models.mistral.hf_reference import make_hf_model
from tests.models.mistral.hf_reference import pack_prompts
from tests.samplers.test_keras_hub_samplers import forbidding_sampler


def run_keras_hub_sampler(causal_lm, inputs, sampler):
    """Token ids of keras_hub's `sampler` looping over our model's `next`.

    keras_hub's loop stands in for ours inside `generate_step`, so both
    samplers see the same model, cache and prefill.
    """

    def keras_hub_loop(next, prompt, cache, index, mask, hidden_states, **kwargs):
        return sampler(
            next, prompt, cache=cache, index=index, mask=mask, hidden_states=hidden_states
        )

    outputs = causal_lm.generate_step(inputs, stop_token_ids=None, sampler=keras_hub_loop)
    return ops.convert_to_numpy(outputs["token_ids"])


# --- the shipped bfloat16 demo preset ---------------------------------------

PROMPT = "The quick brown fox"
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def demo():
    return MistralCausalLM.from_preset("mistral_hub_demo")


# Each identifier with the keras_hub sampler that must give the same output;
# the two instances are the calls of issue 18 that crashed.
DEMO_SAMPLERS = {
    "greedy": keras_hub.samplers.GreedySampler(),
    "top_k": keras_hub.samplers.TopKSampler(),
    "top_p": keras_hub.samplers.TopPSampler(),
    "random": keras_hub.samplers.RandomSampler(),
    "beam": keras_hub.samplers.BeamSampler(),
    "contrastive": keras_hub.samplers.ContrastiveSampler(),
    "BeamSampler(num_beams=2)": keras_hub.samplers.BeamSampler(num_beams=2),
    "ContrastiveSampler(k=3, alpha=0.6)": keras_hub.samplers.ContrastiveSampler(
        k=3, alpha=0.6
    ),
}
DEMO_INSTANCES = {
    "BeamSampler(num_beams=2)": BeamSampler(num_beams=2),
    "ContrastiveSampler(k=3, alpha=0.6)": ContrastiveSampler(k=3, alpha=0.6),
}


@pytest.mark.parametrize("name", list(DEMO_SAMPLERS))
def test_every_sampler_generates_on_the_demo_preset(demo, name):
    # A single prompt: beam and contrastive search expand the KV cache from
    # a batch of one, which torch's `ops.repeat` returns as a shared view.
    demo.compile(sampler=DEMO_INSTANCES.get(name, name))
    kwargs = dict(max_new_tokens=NEW_TOKENS, stop_token_ids=None, seed=3)
    output = demo.generate(PROMPT, **kwargs)
    assert isinstance(output, str) and output.startswith(PROMPT)
    assert len(output) > len(PROMPT)
    # keras_hub's sampler object and its config run as the same sampler.
    keras_hub_sampler = DEMO_SAMPLERS[name]
    for identifier in (keras_hub_sampler, keras_hub.samplers.serialize(keras_hub_sampler)):
        assert demo.generate(PROMPT, sampler=identifier, **kwargs) == output
    if name in DEMO_INSTANCES:
        # Deterministic searches pick what keras_hub's loop picks over the
        # same model.
        (prompt_ids,) = demo._tokenize_prompts([PROMPT])
        inputs = demo.preprocessor.generate_preprocess(
            [PROMPT], sequence_length=len(prompt_ids) + NEW_TOKENS
        )
        expected = run_keras_hub_sampler(demo, inputs, keras_hub_sampler)
        (expected,) = demo.preprocessor.generate_postprocess(
            {"token_ids": expected, "padding_mask": np.ones_like(expected, bool)}
        )
        assert output == expected


def test_keras_hub_documented_custom_sampler_on_the_demo_preset(demo):
    (prompt_ids,) = demo._tokenize_prompts([PROMPT])
    inputs = demo.preprocessor.generate_preprocess(
        [PROMPT], sequence_length=len(prompt_ids) + NEW_TOKENS
    )
    greedy = run_keras_hub_sampler(demo, inputs, keras_hub.samplers.GreedySampler())
    # Forbid every token greedy search picks, so the override matters.
    forbidden = sorted({int(t) for t in greedy[0, len(prompt_ids) :]})
    demo.compile(sampler=forbidding_sampler(Sampler)(forbidden_tokens=forbidden))
    output = demo.generate(PROMPT, max_new_tokens=NEW_TOKENS, stop_token_ids=None)
    expected = run_keras_hub_sampler(
        demo, inputs, forbidding_sampler(keras_hub.samplers.Sampler)(forbidden)
    )
    assert not np.isin(expected[0, len(prompt_ids) :], forbidden).any()
    (expected,) = demo.preprocessor.generate_postprocess(
        {"token_ids": expected, "padding_mask": np.ones_like(expected, bool)}
    )
    assert output == expected


# --- tiny random models with odd head counts --------------------------------

HEAD_DIM = 8
# (query heads, key/value heads)
HEADS = [(3, 1), (6, 3), (5, 5)]


@functools.lru_cache(maxsize=None)
def tiny_model(query_heads, kv_heads):
    """A random transformers model, its twin and two prompts, built once."""
    hf_model = make_hf_model(
        seed=query_heads,
        hidden_size=query_heads * HEAD_DIM,
        num_attention_heads=query_heads,
        num_key_value_heads=kv_heads,
        # No end token: transformers' beam search then keeps the same
        # candidates as ours up to the last position.
        eos_token_id=None,
    )
    causal_lm = MistralCausalLM(keras_backbone_from_hf(hf_model))
    rng = np.random.default_rng(query_heads)
    prompts = [rng.integers(3, 97, size=n).tolist() for n in (7, 4)]
    return hf_model, causal_lm, prompts


def heads_id(heads):
    return f"{heads[0]}q{heads[1]}kv"


TOTAL_LENGTH = 16


def hf_search(hf_model, prompt, **kwargs):
    with torch.no_grad():
        output = hf_model.generate(
            torch.tensor([prompt]),
            max_new_tokens=TOTAL_LENGTH - len(prompt),
            do_sample=False,
            pad_token_id=0,
            **kwargs,
        )
    return output[0].tolist()


@pytest.mark.parametrize("heads", HEADS, ids=heads_id)
def test_beam_search_equals_transformers(heads):
    hf_model, causal_lm, prompts = tiny_model(*heads)
    # A batch of two prompts of different lengths: beams of one row must
    # neither read nor reorder the other row's cache.
    output = causal_lm.generate(
        pack_prompts(prompts, TOTAL_LENGTH), stop_token_ids=None, sampler=BeamSampler(num_beams=2)
    )["token_ids"]
    for row, prompt in enumerate(prompts):
        assert output[row].tolist() == hf_search(hf_model, prompt, num_beams=2)


# The other samplers handle the cache like beam search or not at all; one
# head layout each keeps the test suite fast.
def test_contrastive_search_equals_keras_hub():
    _, causal_lm, prompts = tiny_model(3, 1)
    # keras_hub's contrastive loop needs prompts of one length.
    inputs = pack_prompts([prompts[0], prompts[0][::-1]], TOTAL_LENGTH)
    expected = run_keras_hub_sampler(
        causal_lm, inputs, keras_hub.samplers.ContrastiveSampler(k=3, alpha=0.6)
    )
    output = causal_lm.generate(
        inputs, stop_token_ids=None, sampler=ContrastiveSampler(k=3, alpha=0.6)
    )["token_ids"]
    np.testing.assert_array_equal(output, expected)


def test_sampling_follows_transformers_probabilities():
    hf_model, causal_lm, prompts = tiny_model(5, 5)
    inputs = pack_prompts(prompts, TOTAL_LENGTH)
    prompt_lengths = inputs["padding_mask"].sum(-1)

    def generated(sampler):
        token_ids = causal_lm.generate(inputs, stop_token_ids=None, sampler=sampler, seed=5)[
            "token_ids"
        ]
        _, logits = hf_forward(hf_model, token_ids, np.ones_like(token_ids))
        probabilities = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()
        for row, length in enumerate(prompt_lengths):
            for position in range(length, TOTAL_LENGTH):
                yield token_ids[row, position], probabilities[row, position - 1]

    for token, probabilities in generated(GreedySampler()):
        assert token == np.argmax(probabilities)
    for token, probabilities in generated(TopKSampler(k=2)):
        assert token in np.argsort(-probabilities)[:2]
    for token, probabilities in generated(TopPSampler(p=0.3)):
        order = np.argsort(-probabilities)
        mass_before = np.cumsum(probabilities[order]) - probabilities[order]
        nucleus = order[mass_before < 0.3 + 1e-4]
        assert token in nucleus
    # A near-zero temperature turns random sampling into greedy search.
    for token, probabilities in generated(RandomSampler(temperature=1e-4)):
        assert token == np.argmax(probabilities)
