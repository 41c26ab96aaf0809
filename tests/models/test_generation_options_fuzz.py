"""Fuzzes `generate()`'s arguments: only ValueError/TypeError escape, no NaN.

One demo-preset model, warmed up once; the valid values drawn below match
the warm-up call (or one `top_k` above the vocabulary), so only a couple of
decode loops are ever compiled and the examples stay cheap.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import event
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM

MAX_LENGTH = 12
NAN, INF = math.nan, math.inf
BAD_NUMBERS = [NAN, INF, -INF, -1, 0, True, "1", [1], None]


def _token_inputs(vocabulary_size):
    ids = np.array([[1, 20, 30, 0] + [0] * (MAX_LENGTH - 4)], "int32")
    mask = ids != 0
    variants = {
        "valid": (ids, mask),
        "too_large": (np.where(mask, vocabulary_size + 5, 0), mask),
        "negative": (np.where(mask, -2, 0), mask),
        "float": (ids.astype("float32") + 0.5, mask),
        "left_padded": (np.roll(ids, 2, axis=1), np.roll(mask, 2, axis=1)),
        "holes": (ids, mask & (np.arange(MAX_LENGTH) != 1)),
        "no_rows": (ids[:0], mask[:0]),
        "bad_shape": (ids, mask[:, :-1]),
    }
    return {name: {"token_ids": i, "padding_mask": m} for name, (i, m) in variants.items()}


@pytest.fixture(scope="module")
def causal_lm():
    causal_lm = MistralCausalLM.from_preset("mistral_hub_demo")
    causal_lm.generate("the quick", max_length=MAX_LENGTH)
    return causal_lm


ARGUMENTS = {
    "inputs": st.sampled_from(
        ["the quick", ["a b"], "", [], [""], [1, 2], None, b"bytes", ["x", 3], "token:valid"]
        + [f"token:{name}" for name in ("too_large", "negative", "float", "left_padded",
                                         "holes", "no_rows", "bad_shape")]
    ),
    "max_length": st.sampled_from([MAX_LENGTH, 1, 0, -4, 8.0, True, "12"]),
    "max_new_tokens": st.sampled_from([None, 0, -1, 2.0, True, "3"]),
    "seed": st.sampled_from([None, 0, 7, 2**32 - 1, -1, 2**32, 1.5, "7", True, NAN]),
    "temperature": st.sampled_from([None] + BAD_NUMBERS),
    "top_k": st.sampled_from([None, 10**9, 0, -3, 2.5, True, "5"]),
    "top_p": st.sampled_from([None] + BAD_NUMBERS + [1.5]),
    "min_p": st.sampled_from([None, NAN, INF, -0.1, 1.5, "x"]),
    "repetition_penalty": st.sampled_from([None, NAN, INF, 0, -1.0, "x"]),
    "presence_penalty": st.sampled_from([None, NAN, INF, 3.0, "x"]),
    "stop_strings": st.sampled_from([None, "", [], [""], 5, ["x", 3], [None]]),
    "stop_token_ids": st.sampled_from(["auto", "eos", [], [-1], [10**6], [True], [2.5], 3]),
    "num_return_sequences": st.sampled_from([1, 0, -1, 2.0, True, "2"]),
    "strip_prompt": st.sampled_from([False, True, "yes", None, 1]),
    "logits_processors": st.sampled_from([None, [3], "abc", 3]),
    "sampler": st.sampled_from([None, "nucleus", 3, {"class_name": "Nope"}]),
}


# Up to three arguments per call, so that valid calls are common too.
CALLS = st.lists(st.sampled_from(sorted(ARGUMENTS)), max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: ARGUMENTS[name] for name in names})
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(CALLS)
def test_generate_arguments_fuzz(causal_lm, kwargs):
    inputs = kwargs.pop("inputs", "the quick")
    preprocessor = causal_lm.preprocessor
    if isinstance(inputs, str) and inputs.startswith("token:"):
        # Token inputs: no preprocessor, explicit stop ids.
        inputs = _token_inputs(causal_lm.backbone.vocabulary_size)[inputs[len("token:"):]]
        kwargs.setdefault("stop_token_ids", None)
        causal_lm.preprocessor = None
    elif kwargs.get("max_new_tokens") is None:
        kwargs.setdefault("max_length", MAX_LENGTH)
    try:
        output = causal_lm.generate(inputs, **kwargs)
    except (ValueError, TypeError) as error:
        assert str(error), "errors must say what is wrong"
        event(type(error).__name__)
        return
    finally:
        causal_lm.preprocessor = preprocessor
    event("generated")
    if isinstance(output, dict):
        token_ids = output["token_ids"]
        assert token_ids.dtype.kind in "iu"
        assert ((token_ids >= 0) & (token_ids < causal_lm.backbone.vocabulary_size)).all()
    else:
        texts = output if isinstance(output, list) else [output]
        assert all(isinstance(t, str) for t in texts)
        prompts = causal_lm.preprocessor.tokenize_prompts([t or "a" for t in texts])
        token_ids = causal_lm.preprocessor.pack_prompts(
            [ids[: 4 * MAX_LENGTH] for ids in prompts], 4 * MAX_LENGTH + 1
        )["token_ids"]
    logits = causal_lm.score(token_ids)
    assert np.isfinite(ops.convert_to_numpy(ops.cast(logits, "float32"))).all()
