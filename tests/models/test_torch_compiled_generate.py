"""`compile(jit_compile=True)` on torch: the decode step runs `torch.compile`d."""

import keras
import numpy as np
import pytest
import torch

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.utils import backend
from tests.models.mistral.hf_reference import keras_backbone_from_hf
from tests.models.mistral.hf_reference import make_hf_model
from tests.models.mistral.hf_reference import pack_prompts

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "torch",
    reason="`jit_compile=True` compiles the decode step alone only on torch",
)

# Shorter than every prompt plus its completion: the rolling cache wraps.
WINDOW = 8


def _compiled_lm(hf_model):
    causal_lm = MistralCausalLM(keras_backbone_from_hf(hf_model))
    causal_lm.compile(sampler="greedy", jit_compile=True)
    return causal_lm


def _assert_greedy(hf_model, token_ids, prompt_length):
    """Each generated token is the argmax of transformers' logits before it.

    Checked on one forward pass: transformers' own `generate()` drifts from
    its forward pass once the sequence outgrows the sliding window.
    """
    with torch.no_grad():
        logits = hf_model(torch.tensor([token_ids])).logits[0]
    expected = logits[prompt_length - 1 : -1].argmax(-1).tolist()
    assert token_ids[prompt_length:] == expected


def _compiled_steps():
    """Graphs dynamo holds for the decode step (all models share its code)."""
    code = MistralCausalLM.call_with_cache.__code__
    return len(torch._dynamo.eval_frame._debug_get_cache_entry_list(code))


@pytest.fixture(scope="module")
def hf_model():
    # One layer: inductor's compile time grows with the layers.
    return make_hf_model(sliding_window=WINDOW, num_hidden_layers=1)


@pytest.fixture(scope="module")
def causal_lm(hf_model):
    return _compiled_lm(hf_model)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(1)
    return [rng.integers(3, 97, size=n).tolist() for n in (11, 5, 8)]


def test_greedy_tokens_match_transformers_right_and_left_padded(
    hf_model, causal_lm, prompts
):
    total = 11 + 16
    right = causal_lm.generate(pack_prompts(prompts[:2], total), stop_token_ids=None)
    for row, prompt in enumerate(prompts[:2]):
        _assert_greedy(hf_model, right["token_ids"][row].tolist(), len(prompt))
    # Prompts of different lengths with a budget of new tokens are left
    # padded inside `generate()`.
    new_tokens = 12
    left = causal_lm.generate(
        pack_prompts(prompts[:2], total), stop_token_ids=None, max_new_tokens=new_tokens
    )
    for row, prompt in enumerate(prompts[:2]):
        tokens = left["token_ids"][row, : len(prompt) + new_tokens].tolist()
        _assert_greedy(hf_model, tokens, len(prompt))
    assert _compiled_steps() >= 2


def test_no_recompilation_across_prompt_lengths_max_length_and_batch(causal_lm, prompts):
    causal_lm.generate(pack_prompts(prompts[:2], 30), stop_token_ids=None)
    compiled = _compiled_steps()
    assert compiled >= 1
    # Other prompt lengths, a cache shorter than the window (7 slots) and
    # another batch size reuse the compiled step.
    causal_lm.generate(pack_prompts([prompts[2][:4], prompts[1][:2]], 7), stop_token_ids=None)
    causal_lm.generate(pack_prompts(prompts, 20), stop_token_ids=None)
    assert _compiled_steps() == compiled


def test_weights_loaded_after_compiling_are_used(hf_model, prompts, tmp_path):
    causal_lm = _compiled_lm(hf_model)
    packed = pack_prompts(prompts[:2], 24)
    before = causal_lm.generate(packed, stop_token_ids=None)["token_ids"]
    assert _compiled_steps() >= 1
    other_hf_model = make_hf_model(seed=1, sliding_window=WINDOW, num_hidden_layers=1)
    path = str(tmp_path / "other.weights.h5")
    MistralCausalLM(keras_backbone_from_hf(other_hf_model)).save_weights(path)
    causal_lm.load_weights(path)
    after = causal_lm.generate(packed, stop_token_ids=None)["token_ids"]
    assert after.tolist() != before.tolist()
    for row, prompt in enumerate(prompts[:2]):
        _assert_greedy(other_hf_model, after[row].tolist(), len(prompt))


def test_failed_compilation_warns_and_decodes_eagerly(hf_model, prompts, monkeypatch):
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(backend, "_TORCH_COMPILE_BACKEND", failing_backend)
    causal_lm = _compiled_lm(hf_model)
    with pytest.warns(UserWarning, match="jit_compile=True.*no C\\+\\+ compiler"):
        output = causal_lm.generate(pack_prompts(prompts[:1], 20), stop_token_ids=None)
    _assert_greedy(hf_model, output["token_ids"][0].tolist(), len(prompts[0]))
