import os

import keras
import numpy as np
import pytest
import torch
from keras import ops

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.samplers import BeamSampler
from tests.models.mistral.hf_reference import keras_backbone_from_hf
from tests.models.mistral.hf_reference import make_hf_model
from tests.models.mistral.hf_reference import pack_prompts
from tests.test_data import mistral_test_proto


@pytest.fixture(scope="module")
def hf_and_keras():
    # A window of 8 is far shorter than prompt + 64 new tokens, so the
    # rolling cache wraps many times.
    hf_model = make_hf_model(sliding_window=8, vocab_size=97)
    causal_lm = MistralCausalLM(keras_backbone_from_hf(hf_model))
    causal_lm.compile(sampler="greedy")
    return hf_model, causal_lm


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(1)
    return [rng.integers(3, 97, size=n).tolist() for n in (11, 5, 8)]


def test_greedy_generation_matches_transformers(hf_and_keras, prompts):
    hf_model, causal_lm = hf_and_keras
    new_tokens = 64
    for prompt in prompts[:2]:
        total = len(prompt) + new_tokens
        output = causal_lm.generate(pack_prompts([prompt], total), stop_token_ids=None)
        with torch.no_grad():
            expected = hf_model.generate(
                torch.tensor([prompt]),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
        assert output["token_ids"][0].tolist() == expected[0].tolist()


def test_batch_of_mixed_lengths_equals_rows_generated_alone(hf_and_keras, prompts):
    _, causal_lm = hf_and_keras
    total = max(map(len, prompts)) + 24
    batch = causal_lm.generate(pack_prompts(prompts, total), stop_token_ids=None)
    for row, prompt in enumerate(prompts):
        alone = causal_lm.generate(pack_prompts([prompt], total), stop_token_ids=None)
        np.testing.assert_array_equal(batch["token_ids"][row], alone["token_ids"][0])


@pytest.mark.parametrize("sliding_window", [4, None])
def test_cached_decoding_logits_equal_full_forward_at_every_step(sliding_window):
    backbone = MistralBackbone(
        vocabulary_size=50, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32, sliding_window=sliding_window,
    )
    causal_lm = MistralCausalLM(backbone)
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 50, size=(2, 14)).astype("int32")
    full_logits = ops.convert_to_numpy(
        causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    )
    prompt_length = 5
    cache_length = causal_lm.cache_length(14)
    _, cache = causal_lm._build_cache(
        token_ids[:, :prompt_length], ops.convert_to_tensor(prompt_length), cache_length
    )
    for index in range(prompt_length, 14):
        logits, _, cache = causal_lm.call_with_cache(
            token_ids[:, index - 1 : index], cache, index - 1
        )
        np.testing.assert_allclose(
            ops.convert_to_numpy(logits)[:, 0], full_logits[:, index - 1], atol=1e-5, rtol=1e-5
        )


def test_rolling_cache_is_bounded_by_the_window():
    backbone = MistralBackbone(
        vocabulary_size=50, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=8, intermediate_dim=16, sliding_window=6,
    )
    causal_lm = MistralCausalLM(backbone)
    assert causal_lm.cache_length(100) == 6
    _, cache = causal_lm._build_cache(np.ones((1, 10), "int32"), ops.convert_to_tensor(9), 6)
    assert tuple(cache[0].shape) == (1, 2, 6, 1, 4)


def test_beam_search_with_one_beam_equals_greedy(hf_and_keras, prompts):
    _, causal_lm = hf_and_keras
    inputs = pack_prompts(prompts, 20)
    greedy = causal_lm.generate(inputs, stop_token_ids=None, sampler="greedy")
    beam = causal_lm.generate(inputs, stop_token_ids=None, sampler=BeamSampler(num_beams=1))
    np.testing.assert_array_equal(greedy["token_ids"], beam["token_ids"])


# --- string interface, on keras_hub's tiny test vocabulary ------------------


@pytest.fixture
def causal_lm():
    keras.utils.set_random_seed(0)
    tokenizer = MistralTokenizer(proto=mistral_test_proto())
    preprocessor = MistralCausalLMPreprocessor(tokenizer, sequence_length=8)
    backbone = MistralBackbone(
        vocabulary_size=10, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=8, intermediate_dim=16, sliding_window=4,
    )
    return MistralCausalLM(backbone, preprocessor)


TEXTS = ["the quick brown fox", "the earth is round"]


def test_logits_shape(causal_lm):
    x, _, _ = causal_lm.preprocessor(TEXTS)
    assert tuple(causal_lm(x).shape) == (2, 8, 10)
    assert causal_lm.predict(TEXTS, verbose=0).shape == (2, 8, 10)


def test_generate_strings(causal_lm):
    output = causal_lm.generate("the quick", max_length=8)
    assert isinstance(output, str) and output.startswith("the quick")
    outputs = causal_lm.generate(TEXTS, max_length=8)
    assert len(outputs) == 2 and outputs[1].startswith("the earth is round")


def test_generate_tf_dataset(causal_lm):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(TEXTS * 2).batch(3)
    outputs = causal_lm.generate(dataset, max_length=8, sampler="greedy")
    assert outputs == causal_lm.generate(TEXTS * 2, max_length=8, sampler="greedy")


def test_generate_preprocessed_inputs(causal_lm):
    inputs = causal_lm.preprocessor.generate_preprocess(TEXTS)
    causal_lm.preprocessor = None
    output = causal_lm.generate(inputs, stop_token_ids=None)
    np.testing.assert_array_equal(output["token_ids"][:, :5], inputs["token_ids"][:, :5])
    assert output["padding_mask"].all()


def test_generation_stops_on_stop_token_and_drops_what_follows(causal_lm):
    end_id = causal_lm.preprocessor.tokenizer.end_token_id
    original = causal_lm.call_with_cache

    def always_end(token_ids, cache, cache_update_index):
        logits, hidden_states, cache = original(token_ids, cache, cache_update_index)
        bonus = ops.one_hot(ops.full(ops.shape(logits)[:2], end_id), 10) * 1e9
        return logits + ops.cast(bonus, logits.dtype), hidden_states, cache

    causal_lm.call_with_cache = always_end
    prompts = ["the quick brown fox", "the earth"]
    assert causal_lm.generate(prompts, max_length=8) == prompts
    # With no stop ids the loop runs to the length limit.
    long = causal_lm.generate(["the earth"], max_length=8, stop_token_ids=None)
    assert long == ["the earth"]  # only end tokens were generated, and they are special


def test_stop_token_ids_list(causal_lm):
    inputs = causal_lm.preprocessor.generate_preprocess(["the"])
    causal_lm.preprocessor = None
    output = causal_lm.generate(inputs, stop_token_ids=list(range(10)))
    mask = output["padding_mask"][0]
    # The first generated token is a stop id; everything after it is dropped.
    assert mask.tolist() == [True, True, True] + [False] * 5


def test_strip_prompt(causal_lm):
    full = causal_lm.generate(TEXTS, max_length=8, sampler="greedy")
    stripped = causal_lm.generate(TEXTS, max_length=8, sampler="greedy", strip_prompt=True)
    for prompt, whole, part in zip(TEXTS, full, stripped):
        assert whole.startswith(prompt)
        assert whole[len(prompt):].strip() == part.strip()


def test_max_new_tokens(causal_lm):
    inputs = causal_lm.preprocessor.generate_preprocess(["the quick", "the"], sequence_length=4)
    causal_lm.preprocessor = None
    output = causal_lm.generate(inputs, stop_token_ids=None, max_new_tokens=3)
    # Every row gets exactly 3 new tokens on top of its own prompt.
    assert output["padding_mask"].sum(axis=-1).tolist() == [3 + 3, 2 + 3]
    assert output["token_ids"].shape == (2, 6)


def test_max_new_tokens_with_strings(causal_lm):
    output = causal_lm.generate("the quick brown fox", max_new_tokens=2, sampler="greedy",
                                stop_token_ids=None, strip_prompt=True)
    assert 1 <= len(output.split()) <= 2


def test_same_seed_same_output(causal_lm):
    causal_lm.compile(sampler="random")
    first = causal_lm.generate(TEXTS * 4, max_length=8, seed=3, stop_token_ids=None)
    second = causal_lm.generate(TEXTS * 4, max_length=8, seed=3, stop_token_ids=None)
    assert first == second


def test_generate_function_is_reused_and_reset_by_compile(causal_lm):
    causal_lm.generate("the", max_length=8)
    function = causal_lm.generate_function
    assert function is not None
    causal_lm.generate("the quick", max_length=8)
    assert causal_lm.generate_function is function
    causal_lm.compile(sampler="greedy")
    assert causal_lm.generate_function is None


def test_per_call_sampler_keeps_optimizer_state(causal_lm):
    causal_lm.fit(TEXTS, epochs=1, batch_size=2, verbose=0)
    optimizer = causal_lm.optimizer
    iterations = int(ops.convert_to_numpy(optimizer.iterations))
    causal_lm.generate("the", max_length=8, sampler="greedy")
    assert causal_lm.optimizer is optimizer
    assert int(ops.convert_to_numpy(optimizer.iterations)) == iterations


@pytest.mark.parametrize("kind", ["strings", "tf_dataset", "arrays"])
def test_fit_lowers_the_loss(causal_lm, kind):
    causal_lm.compile(optimizer=keras.optimizers.Adam(0.01))
    texts = ["the quick brown fox", "the earth is round"] * 16
    if kind == "strings":
        data = dict(x=texts, batch_size=8)
    elif kind == "tf_dataset":
        import tensorflow as tf

        data = dict(x=tf.data.Dataset.from_tensor_slices(texts).batch(8))
    else:
        x, y, sample_weight = causal_lm.preprocessor(texts)
        causal_lm.preprocessor = None
        data = dict(x=x, y=y, sample_weight=sample_weight, batch_size=8)
    history = causal_lm.fit(**data, epochs=5, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]


def test_padding_positions_carry_zero_weight(causal_lm):
    x, y, sample_weight = causal_lm.preprocessor(["the"])
    assert sample_weight.tolist() == [[True, True] + [False] * 6]
    # Changing the labels under zero weight leaves the loss unchanged.
    causal_lm.compile()
    y_changed = np.where(sample_weight, y, 7)
    first = causal_lm.compute_loss(x, y, causal_lm(x), sample_weight)
    second = causal_lm.compute_loss(x, y_changed, causal_lm(x), sample_weight)
    np.testing.assert_allclose(ops.convert_to_numpy(first), ops.convert_to_numpy(second))


def test_score(causal_lm):
    x, _, _ = causal_lm.preprocessor(TEXTS)
    token_ids, padding_mask = x["token_ids"], x["padding_mask"]
    logits = causal_lm.score(token_ids, padding_mask)
    np.testing.assert_allclose(
        ops.convert_to_numpy(logits), ops.convert_to_numpy(causal_lm(x)), atol=1e-5
    )
    target_ids = np.roll(token_ids, -1, axis=1)
    loss = causal_lm.score(token_ids, padding_mask, scoring_mode="loss", target_ids=target_ids)
    assert tuple(loss.shape) == (2, 8)
    seen = []

    def intercept(x, i):
        seen.append((i, tuple(x.shape)))
        return x

    causal_lm.score(token_ids, padding_mask, layer_intercept_fn=intercept)
    assert seen == [(-1, (2, 8, 8)), (0, (2, 8, 8)), (1, (2, 8, 8))]


def test_keras_file_round_trip(causal_lm, tmp_path):
    path = os.path.join(tmp_path, "causal_lm.keras")
    causal_lm.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, MistralCausalLM)
    x, _, _ = causal_lm.preprocessor(TEXTS)
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(x)), ops.convert_to_numpy(causal_lm(x)), atol=1e-6
    )
    assert restored.generate("the quick", max_length=8, sampler="greedy") == (
        causal_lm.generate("the quick", max_length=8, sampler="greedy")
    )


BAD_GENERATE_CALLS = [
    (dict(inputs=[]), "inputs"),
    (dict(inputs="the quick brown fox", max_length=5), "max_length"),
    (dict(inputs="the", max_new_tokens=-1), "max_new_tokens"),
    (dict(inputs="the", max_length=8, max_new_tokens=2), "max_new_tokens"),
    (dict(inputs="the", sampler="nucleus"), "nucleus"),
    (dict(inputs="the", stop_token_ids="eos"), "stop_token_ids"),
    (dict(inputs="the", stop_token_ids=[99]), "stop_token_ids"),
    (dict(inputs=[1, 2]), "inputs"),
]


@pytest.mark.parametrize("kwargs,message", BAD_GENERATE_CALLS)
def test_bad_generate_arguments(causal_lm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        causal_lm.generate(**kwargs)


def test_auto_stop_without_preprocessor_is_an_error(causal_lm):
    causal_lm.preprocessor = None
    with pytest.raises(ValueError, match="stop_token_ids"):
        causal_lm.generate({"token_ids": np.ones((1, 4), "int32"), "padding_mask": np.ones((1, 4), bool)})


def test_score_errors(causal_lm):
    with pytest.raises(ValueError, match="scoring_mode"):
        causal_lm.score(np.ones((1, 4), "int32"), scoring_mode="probabilities")
    with pytest.raises(ValueError, match="target_ids"):
        causal_lm.score(np.ones((1, 4), "int32"), scoring_mode="loss")


def test_streaming_equals_non_streaming(causal_lm):
    causal_lm.compile(sampler="top_k")
    chunks = []
    final = causal_lm.generate(
        "the quick", max_length=8, seed=7, strip_prompt=True, stop_token_ids=None,
        streamer=chunks.append,
    )
    assert "".join(chunks) == final
    assert len(chunks) >= 1
    streamed = list(causal_lm.stream(["the", "the earth"], max_length=8, seed=7, stop_token_ids=None))
    batch = causal_lm.generate(["the", "the earth"], max_length=8, seed=7, strip_prompt=True,
                               stop_token_ids=None)
    joined = ["".join(chunk[row] for chunk in streamed) for row in range(2)]
    assert joined == batch


def test_generate_refuses_unbatched_datasets(causal_lm):
    # keras_hub generates a dataset batch by batch; an unbatched dataset of
    # strings used to come back as one "prompt" per character.
    import tensorflow as tf

    strings = tf.data.Dataset.from_tensor_slices(TEXTS)
    with pytest.raises(ValueError, match=r"`inputs` must be a batched.*dataset\.batch\("):
        causal_lm.generate(strings, max_length=8)

    inputs = causal_lm.preprocessor.generate_preprocess(TEXTS)
    causal_lm.preprocessor = None
    token_dicts = tf.data.Dataset.from_tensor_slices(inputs)
    with pytest.raises(ValueError, match=r"`inputs` must be a batched.*dataset\.batch\("):
        causal_lm.generate(token_dicts, stop_token_ids=None)
    batched = causal_lm.generate(token_dicts.batch(2), stop_token_ids=None, sampler="greedy")
    whole = causal_lm.generate(inputs, stop_token_ids=None, sampler="greedy")
    np.testing.assert_array_equal(batched["token_ids"], whole["token_ids"])


# --- chunked prefill, mixed prompt lengths, long prompts ---------------------


@pytest.mark.parametrize("sliding_window", [6, None])
def test_chunked_prefill_then_decoding_equals_full_forward(monkeypatch, sliding_window):
    from mistral_hub.models.mistral import mistral_causal_lm

    # Chunks of 4: a 15-token prefix runs as 4 chunks, the last one ragged,
    # through a rolling buffer shorter than the prefix when there is a
    # window; decoding starts at 13 as for the shortest row of a batch.
    monkeypatch.setattr(mistral_causal_lm, "_PREFILL_CHUNK", 4)
    backbone = MistralBackbone(
        vocabulary_size=50, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32, sliding_window=sliding_window,
    )
    causal_lm = MistralCausalLM(backbone)
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 50, size=(2, 20)).astype("int32")
    full_logits = ops.convert_to_numpy(
        causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    )
    _, cache = causal_lm._build_cache(
        token_ids[:, :15], ops.convert_to_tensor(13), causal_lm.cache_length(20)
    )
    for index in range(13, 20):
        logits, _, cache = causal_lm.call_with_cache(
            token_ids[:, index - 1 : index], cache, index - 1
        )
        np.testing.assert_allclose(
            ops.convert_to_numpy(logits)[:, 0], full_logits[:, index - 1], atol=1e-5, rtol=1e-5
        )


def test_mixed_prompt_lengths_decode_every_row_from_its_own_end(hf_and_keras, prompts):
    hf_model, causal_lm = hf_and_keras
    # The 70-token prompt is far longer than the window (8) and the others.
    mixed = prompts + [np.random.default_rng(2).integers(3, 97, size=70).tolist()]
    new_tokens = 12
    inputs = pack_prompts(mixed, 70)
    steps = []
    if keras.config.backend() == "torch":
        # Eager decoding (not traced): count the one-token model calls of
        # the loop.
        original = causal_lm.call_with_cache

        def counting(token_ids, *args, **kwargs):
            steps.append(tuple(token_ids.shape))
            return original(token_ids, *args, **kwargs)

        causal_lm.call_with_cache = counting
        causal_lm.run_eagerly = True
    try:
        output = causal_lm.generate(inputs, max_new_tokens=new_tokens, stop_token_ids=None)
        beam = causal_lm.generate(
            inputs, max_new_tokens=new_tokens, stop_token_ids=None,
            sampler=BeamSampler(num_beams=1),
        )
    finally:
        causal_lm.__dict__.pop("call_with_cache", None)
        causal_lm.run_eagerly = False
    for row, prompt in enumerate(mixed):
        with torch.no_grad():
            expected = hf_model.generate(
                torch.tensor([prompt]), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
            )
        generated = output["token_ids"][row][output["padding_mask"][row]]
        assert generated.tolist() == expected[0].tolist()
    np.testing.assert_array_equal(
        np.where(beam["padding_mask"], beam["token_ids"], -1),
        np.where(output["padding_mask"], output["token_ids"], -1),
    )
    if steps:
        # One decode step per new token (greedy, then beam search), not one
        # per token from the shortest prompt on (65 + 12).
        assert steps == [(4, 1)] * (2 * new_tokens)


_LONG_PROMPT_SCRIPT = """
import resource, sys
# A safety net against swapping when prefill regresses; the 4 GB bound is
# asserted on the peak resident memory (XLA reserves far more address space
# than it touches, so an address-space cap of 4 GB fails spuriously).
resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))
import mistral_hub
causal_lm = mistral_hub.MistralCausalLM.from_preset({preset!r})
words = " ".join("word%d" % (i % 997) for i in range(20000))
prompt = (words * 2)[:100_000]
assert len(prompt) == 100_000
tokens = len(causal_lm.preprocessor.tokenizer.tokenize(prompt))
completion = causal_lm.generate(prompt, max_new_tokens=2, sampler="greedy", strip_prompt=True)
# VmHWM belongs to this program's address space; ru_maxrss would also count
# the forking pytest process's peak from before exec.
with open("/proc/self/status") as status:
    peak_mb = [int(l.split()[1]) for l in status if l.startswith("VmHWM")][0] / 1024
print("RESULT", tokens, repr(completion), peak_mb)
"""


def test_100k_character_prompt_prefills_within_a_4gb_memory_limit():
    # The demo preset has a window of 128: prefilled in chunks, attention
    # scores take chunk x (window + chunk) memory; prompt x prompt scores
    # for this prompt would need tens of GB.
    if keras.config.backend() != "jax":
        pytest.skip("Runs once, in the JAX suite (the subprocess uses JAX).")
    import subprocess
    import sys

    import mistral_hub

    preset = os.path.join(os.path.dirname(mistral_hub.__file__), "presets", "mistral_hub_demo")
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", _LONG_PROMPT_SCRIPT.format(preset=preset)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT")][-1]
    _, tokens, *_, peak_mb = line.split()
    assert int(tokens) > 10_000
    assert float(peak_mb) < 4096
