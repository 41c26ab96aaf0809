"""`generation_options`: every `generate()` argument checked in one place."""

import numpy as np
import pytest

from mistral_hub import samplers
from mistral_hub.generation.options import GenerationOptions
from mistral_hub.generation.options import generation_options
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM


@pytest.fixture(scope="module")
def causal_lm():
    return MistralCausalLM.from_preset("mistral_hub_demo")


BAD_OPTIONS = [
    # issue 17, item 8: each of these was accepted or failed inside NumPy
    # or the backend.
    (dict(seed=-1), "`seed`"),
    (dict(seed=2**32), "`seed`"),
    (dict(seed=1.5), "`seed`"),
    (dict(seed=True), "`seed`"),
    (dict(temperature=float("inf")), "`temperature`"),
    (dict(temperature=float("nan")), "`temperature`"),
    (dict(temperature=-0.5), "`temperature`"),
    (dict(top_k=True), "`top_k`"),
    (dict(top_k=2.0), "`top_k`"),
    (dict(top_p=float("nan")), "`top_p`"),
    (dict(top_p=0), "`top_p`"),
    (dict(repetition_penalty=float("inf")), "`repetition_penalty`"),
    (dict(min_p=float("nan")), "`min_p`"),
    (dict(max_new_tokens=True), "`max_new_tokens`"),
    (dict(max_new_tokens=2.0), "`max_new_tokens`"),
    (dict(max_length=True), "`max_length`"),
    (dict(max_length=8.0), "`max_length`"),
    (dict(num_return_sequences=True), "`num_return_sequences`"),
    (dict(num_return_sequences=2.0), "`num_return_sequences`"),
    (dict(stop_strings=5), "`stop_strings`"),
    (dict(stop_strings=["ok", 3]), "`stop_strings`"),
    (dict(stop_token_ids=[True]), "`stop_token_ids`"),
    (dict(stop_token_ids=[2.5]), "`stop_token_ids`"),
    (dict(stop_token_ids=[-1]), "`stop_token_ids`"),
    (dict(strip_prompt="yes"), "`strip_prompt`"),
    (dict(keep_stop_strings=1), "`keep_stop_strings`"),
    (dict(logits_processors="abc"), "`logits_processors`"),
]


@pytest.mark.parametrize("kwargs,name", BAD_OPTIONS)
def test_bad_values_name_the_argument(causal_lm, kwargs, name):
    with pytest.raises(ValueError, match=name) as error:
        generation_options(causal_lm, **kwargs)
    assert "Received" in str(error.value) or "ids in" in str(error.value)


@pytest.mark.parametrize("kwargs,name", BAD_OPTIONS[:8])
def test_generate_refuses_them_before_any_backend_work(causal_lm, kwargs, name):
    causal_lm.__dict__["_generate_functions"] = {}
    with pytest.raises(ValueError, match=name):
        causal_lm.generate("the", **kwargs)
    assert causal_lm.__dict__["_generate_functions"] == {}


def test_numpy_scalars_are_plain_python_values(causal_lm):
    options = generation_options(
        causal_lm,
        max_new_tokens=np.int64(3),
        seed=np.int32(7),
        top_k=np.int64(4),
        temperature=np.float32(0.5),
        num_return_sequences=np.int8(2),
        strip_prompt=np.bool_(True),
    )
    assert isinstance(options, GenerationOptions)
    assert (options.max_new_tokens, options.seed, options.num_return_sequences) == (3, 7, 2)
    assert all(
        type(v) is int
        for v in (options.max_new_tokens, options.seed, options.num_return_sequences)
    )
    assert options.strip_prompt is True
    assert isinstance(options.sampler, samplers.TopKSampler) and options.sampler.k == 4
    assert options.sampler.temperature == 0.5
    with pytest.raises(Exception):
        options.seed = 3  # frozen


def test_defaults_and_auto_stop_ids(causal_lm):
    options = generation_options(causal_lm)
    assert options.stop_token_ids == (causal_lm.preprocessor.tokenizer.end_token_id,)
    assert options.sampler is causal_lm.sampler
    assert options.logits_processors == () and options.stop_condition is None
    options = generation_options(causal_lm, stop_strings="\n", min_p=0.1)
    assert options.stop_strings == ["\n"] and len(options.logits_processors) == 1


def test_stop_token_ids_from_arrays_and_tensors(causal_lm):
    from keras import ops

    for ids in ([2, 5], np.array([2, 5]), ops.convert_to_tensor([2, 5], "int32")):
        assert generation_options(causal_lm, stop_token_ids=ids).stop_token_ids == (2, 5)
    with pytest.raises(ValueError, match="`stop_token_ids`"):
        generation_options(causal_lm, stop_token_ids=np.array([2.5]))
