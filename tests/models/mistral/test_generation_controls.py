"""Generation controls against transformers' own processors and criteria."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from keras import ops
from transformers.generation import logits_process
from transformers.generation.stopping_criteria import StopStringCriteria

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.samplers import logits_processors
from mistral_hub.samplers.stop_strings import StopStringMatcher
from tests.models.mistral.hf_reference import keras_backbone_from_hf
from tests.models.mistral.hf_reference import make_hf_model
from tests.test_data import V1_MODEL

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_tokenizer")
    shutil.copy(V1_MODEL, os.path.join(directory, "tokenizer.model"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "legacy": False}, f)
    return transformers.AutoTokenizer.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def models():
    # Tied embeddings make a random model favour repeating its input, so the
    # repetition penalty visibly changes the greedy path.
    hf_model = make_hf_model(vocab_size=32000, sliding_window=6, seed=3, tie_word_embeddings=True)
    tokenizer = MistralTokenizer(proto=V1_MODEL)
    preprocessor = MistralCausalLMPreprocessor(tokenizer, sequence_length=64)
    causal_lm = MistralCausalLM(keras_backbone_from_hf(hf_model), preprocessor)
    causal_lm.compile(sampler="greedy")
    return hf_model, causal_lm


def _hf_generate(hf_model, hf_tokenizer, new_tokens, **kwargs):
    input_ids = torch.tensor([hf_tokenizer(PROMPT).input_ids])
    with torch.no_grad():
        output = hf_model.generate(
            input_ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
            eos_token_id=None, **kwargs,
        )
    return output[0, input_ids.shape[1]:].tolist()


def _our_completion_ids(causal_lm, new_tokens, **kwargs):
    inputs = causal_lm.preprocessor.generate_preprocess([PROMPT])
    prompt_length = int(inputs["padding_mask"].sum())
    preprocessor = causal_lm.preprocessor
    causal_lm.preprocessor = None
    try:
        output = causal_lm.generate(
            {k: v[:, : prompt_length + new_tokens] for k, v in inputs.items()},
            stop_token_ids=None, max_new_tokens=new_tokens, **kwargs,
        )
    finally:
        causal_lm.preprocessor = preprocessor
    return output["token_ids"][0, prompt_length : prompt_length + new_tokens].tolist()


def test_repetition_penalty_matches_transformers(models, hf_tokenizer):
    hf_model, causal_lm = models
    plain = _our_completion_ids(causal_lm, 24)
    expected = _hf_generate(hf_model, hf_tokenizer, 24, repetition_penalty=3.0)
    actual = _our_completion_ids(causal_lm, 24, repetition_penalty=3.0)
    assert actual == expected
    assert actual != plain  # the penalty really changed the greedy path


@pytest.mark.parametrize("min_p", [0.05, 0.3, 1.0])
def test_min_p_matches_transformers_warper(min_p):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((4, 50)) * 3).astype("float32")
    expected = logits_process.MinPLogitsWarper(min_p=min_p)(None, torch.tensor(logits)).numpy()
    actual = ops.convert_to_numpy(
        logits_processors.MinP(min_p)(ops.convert_to_tensor(logits), None, 0, None)
    )
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
    np.testing.assert_allclose(actual[~np.isinf(actual)], expected[~np.isinf(expected)])


def test_repetition_penalty_processor_matches_transformers():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 30)).astype("float32")
    token_ids = rng.integers(0, 30, size=(2, 12)).astype("int32")
    index = 9  # positions 0..8 are the sequence so far
    expected = logits_process.RepetitionPenaltyLogitsProcessor(penalty=1.7)(
        torch.tensor(token_ids[:, :index], dtype=torch.long), torch.tensor(logits)
    ).numpy()
    actual = logits_processors.RepetitionPenalty(1.7)(
        ops.convert_to_tensor(logits), ops.convert_to_tensor(token_ids), index,
        ops.convert_to_tensor(np.zeros((2, 12), bool)),
    )
    np.testing.assert_allclose(ops.convert_to_numpy(actual), expected, rtol=1e-6)


def test_presence_and_frequency_penalties_count_generated_tokens_only():
    logits = np.zeros((1, 6), "float32")
    token_ids = np.array([[4, 4, 1, 1, 1, 2, 0, 0]], "int32")
    prompt_mask = np.array([[1, 1, 0, 0, 0, 0, 0, 0]], bool)
    processor = logits_processors.OccurrencePenalty(presence_penalty=0.5, frequency_penalty=0.25)
    actual = ops.convert_to_numpy(
        processor(*(ops.convert_to_tensor(x) for x in (logits, token_ids)), 6, ops.convert_to_tensor(prompt_mask))
    )
    # Token 1 generated 3 times, token 2 once; token 4 only in the prompt.
    np.testing.assert_allclose(actual, [[0, -1.25, -0.75, 0, 0, 0]])


def test_stop_string_matcher_agrees_with_transformers_criteria(hf_tokenizer):
    tokenizer = MistralTokenizer(proto=V1_MODEL)
    stop_strings = ["lo wo", "\n\n", "ld!", "é"]
    ours = StopStringMatcher(tokenizer.token_bytes(), stop_strings)
    theirs = StopStringCriteria(hf_tokenizer, stop_strings)
    texts = [
        "Hello world!", "Hello world", "I said hello wonderful", "one\n\ntwo", "x\n\n",
        "café", "cafe", "bold!", "He said: lo wo", "ab\ncd\n", "lo", "Hello world! x",
    ]
    for text in texts:
        ids = tokenizer.tokenize(text)
        for end in range(1, len(ids) + 1):
            row = np.array([ids[:end]], "int32")
            expected = bool(theirs(torch.tensor(row, dtype=torch.long), None)[0])
            actual = bool(ops.convert_to_numpy(ours(ops.convert_to_tensor(row), end - 1))[0])
            assert actual == expected, (text, end)


def test_stop_string_spanning_two_tokens_stops_where_transformers_does(models, hf_tokenizer):
    hf_model, causal_lm = models
    free_ids = _hf_generate(hf_model, hf_tokenizer, 20)
    pieces = [hf_tokenizer.decode(free_ids[: i + 1]) for i in range(len(free_ids))]
    # A stop string made of the end of token 6 and the start of token 7.
    boundary = len(pieces[5])
    full = pieces[-1]
    stop = full[boundary - 2 : boundary + 2]
    assert len(stop) == 4 and stop.strip()
    expected_ids = _hf_generate(
        hf_model, hf_tokenizer, 20, stop_strings=[stop], tokenizer=hf_tokenizer
    )
    assert len(expected_ids) < 20  # transformers stopped early
    expected_text = hf_tokenizer.decode(expected_ids)
    assert stop in expected_text

    kept = causal_lm.generate(
        PROMPT, max_new_tokens=20, stop_token_ids=None, strip_prompt=True,
        stop_strings=[stop], keep_stop_strings=True,
    )
    assert kept == expected_text[: expected_text.index(stop) + len(stop)]
    cut = causal_lm.generate(
        PROMPT, max_new_tokens=20, stop_token_ids=None, strip_prompt=True, stop_strings=stop,
    )
    assert cut == expected_text[: expected_text.index(stop)]
    with_prompt = causal_lm.generate(PROMPT, max_new_tokens=20, stop_token_ids=None, stop_strings=stop)
    assert with_prompt.startswith(PROMPT) and with_prompt.endswith(cut)
    # Streaming yields exactly the returned text, never past the stop string.
    chunks = []
    streamed = causal_lm.generate(PROMPT, max_new_tokens=20, stop_token_ids=None,
                                  stop_strings=stop, streamer=chunks.append, strip_prompt=True)
    assert "".join(chunks) == streamed == cut


def test_num_return_sequences(models):
    _, causal_lm = models
    outputs = causal_lm.generate(
        [PROMPT, "Once upon a time"], max_new_tokens=8, sampler="random",
        num_return_sequences=3, seed=0, stop_token_ids=None,
    )
    assert len(outputs) == 2 and all(len(samples) == 3 for samples in outputs)
    assert all(sample.startswith(PROMPT) for sample in outputs[0])
    assert len(set(outputs[0])) == 3 and len(set(outputs[1])) == 3
    single = causal_lm.generate(PROMPT, max_new_tokens=4, top_k=50, num_return_sequences=2)
    assert isinstance(single, list) and len(single) == 2


def test_same_seed_same_output_with_controls(models):
    _, causal_lm = models
    kwargs = dict(max_new_tokens=10, top_p=0.9, temperature=0.8, repetition_penalty=1.2,
                  stop_token_ids=None, seed=11)
    assert causal_lm.generate([PROMPT] * 3, **kwargs) == causal_lm.generate([PROMPT] * 3, **kwargs)


def test_top_k_one_override_equals_greedy(models):
    _, causal_lm = models
    greedy = causal_lm.generate(PROMPT, max_new_tokens=10, stop_token_ids=None)
    top_1 = causal_lm.generate(PROMPT, max_new_tokens=10, stop_token_ids=None, top_k=1,
                               temperature=5.0, seed=1)
    assert top_1 == greedy


def test_custom_logits_processor_bans_a_token(models):
    _, causal_lm = models
    banned = _our_completion_ids(causal_lm, 6)[0]

    def ban(logits, token_ids, index, prompt_mask):
        return ops.where(ops.arange(ops.shape(logits)[-1])[None, :] == banned, float("-inf"), logits)

    assert banned not in _our_completion_ids(causal_lm, 6, logits_processors=[ban])


BAD_CONTROLS = [
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(min_p=1.5), "min_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(stop_strings=[""]), "stop_strings"),
    (dict(stop_strings=[]), "stop_strings"),
    (dict(num_return_sequences=0), "num_return_sequences"),
    (dict(num_return_sequences=2, sampler="greedy"), "num_return_sequences"),
    (dict(presence_penalty=3.0), "presence_penalty"),
    (dict(frequency_penalty="high"), "frequency_penalty"),
    (dict(temperature=0), "temperature"),
    (dict(top_p=1.5), "p"),
    (dict(top_k=0), "k"),
    (dict(logits_processors=[3]), "logits_processors"),
    (dict(seed="7"), "seed"),
]


@pytest.mark.parametrize("kwargs,message", BAD_CONTROLS)
def test_bad_control_values(models, kwargs, message):
    _, causal_lm = models
    with pytest.raises(ValueError, match=message):
        causal_lm.generate(PROMPT, max_new_tokens=2, **kwargs)


def test_chat_encodes_with_the_chat_template_and_returns_the_reply(models):
    _, causal_lm = models
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    prompt_ids = causal_lm.preprocessor.tokenizer.apply_chat_template(messages)
    reply = causal_lm.chat(messages, max_new_tokens=6, stop_token_ids=None)
    # The same ids fed as tokens give the same continuation.
    preprocessor = causal_lm.preprocessor
    causal_lm.preprocessor = None
    try:
        token_ids = np.zeros((1, len(prompt_ids) + 6), "int32")
        token_ids[0, : len(prompt_ids)] = prompt_ids
        output = causal_lm.generate(
            {"token_ids": token_ids, "padding_mask": token_ids != 0}, stop_token_ids=None
        )
    finally:
        causal_lm.preprocessor = preprocessor
    expected = preprocessor.tokenizer.detokenize(output["token_ids"][0, len(prompt_ids):].tolist())
    assert reply == expected
    assert causal_lm.chat([messages, messages], max_new_tokens=6, stop_token_ids=None) == [reply, reply]
    with pytest.raises(ValueError):
        causal_lm.chat([{"role": "assistant", "content": "Hi"}])
