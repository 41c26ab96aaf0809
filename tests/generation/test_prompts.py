"""Token inputs to `generate()`: ids in the vocabulary, right-padded masks, rows."""

import numpy as np
import pytest

from mistral_hub.generation.prompts import token_batch
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM

VOCAB = 2048  # the demo preset's


@pytest.fixture(scope="module")
def causal_lm():
    return MistralCausalLM.from_preset("mistral_hub_demo")


def _inputs(token_ids, padding_mask=None):
    token_ids = np.asarray(token_ids)
    if padding_mask is None:
        padding_mask = np.ones(token_ids.shape, bool)
    return {"token_ids": token_ids, "padding_mask": np.asarray(padding_mask)}


BAD_TOKEN_INPUTS = [
    # issue 17, item 4: NaN logits or a raw IndexError before.
    (_inputs([[1, VOCAB, 0, 0]], [[1, 1, 0, 0]]), rf"`token_ids`.*vocabulary size is {VOCAB}.*={VOCAB}"),
    (_inputs([[1, -3, 0, 0]], [[1, 1, 0, 0]]), r"`token_ids`.*=-3"),
    (_inputs([[1.0, 5.0, 0, 0]], [[1, 1, 0, 0]]), r"`token_ids`.*integer.*float64"),
    (_inputs([[0, 1, 5, 0]], [[0, 1, 1, 0]]), r"`padding_mask`.*right padded"),
    (_inputs([[1, 5, 6, 0]], [[1, 0, 1, 0]]), r"`padding_mask`.*right padded"),
    (_inputs(np.zeros((0, 4), "int32")), r"`inputs` must hold at least one prompt.*\(0, 4\)"),
    ({"token_ids": np.ones((1, 4), "int32")}, r"`inputs`.*padding_mask"),
]


@pytest.mark.parametrize("inputs,message", BAD_TOKEN_INPUTS)
def test_bad_token_inputs(inputs, message):
    with pytest.raises(ValueError, match=message):
        token_batch(inputs, VOCAB)


@pytest.mark.parametrize("inputs,message", BAD_TOKEN_INPUTS)
def test_generate_refuses_bad_token_inputs(causal_lm, inputs, message):
    preprocessor = causal_lm.preprocessor
    causal_lm.preprocessor = None
    try:
        with pytest.raises(ValueError, match=message):
            causal_lm.generate(inputs, stop_token_ids=None)
    finally:
        causal_lm.preprocessor = preprocessor


@pytest.mark.parametrize("inputs", [[], np.array([], dtype=str)])
def test_zero_prompts_are_refused(causal_lm, inputs):
    # As keras_hub (whose packer fails on them), rather than an empty result.
    with pytest.raises(ValueError, match="`inputs`"):
        causal_lm.generate(inputs)


def test_valid_inputs_become_int32_and_bool():
    token_ids, padding_mask = token_batch(_inputs([1, 7, 0], np.array([1, 1, 0], "int32")), VOCAB)
    assert token_ids.dtype == np.int32 and padding_mask.dtype == bool
    assert token_ids.tolist() == [[1, 7, 0]] and padding_mask.tolist() == [[True, True, False]]


def test_preprocessor_tokenizes_prompts_as_generate_preprocess(causal_lm):
    preprocessor = causal_lm.preprocessor
    prompts = preprocessor.tokenize_prompts(["the quick", "a"])
    packed = preprocessor.generate_preprocess(["the quick", "a"], sequence_length=16)
    for row, ids in enumerate(prompts):
        assert packed["token_ids"][row, : len(ids)].tolist() == ids
        assert packed["padding_mask"][row].sum() == len(ids)
    assert preprocessor.tokenize_prompts("a") == prompts[1]
