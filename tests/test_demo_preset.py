"""Tests of the `mistral_hub_demo` preset shipped in the package."""

import contextlib
import importlib.util
import io
import os

import pytest

import mistral_hub
from mistral_hub import MistralCausalLM

PRESET_DIR = os.path.join(
    os.path.dirname(mistral_hub.__file__), "presets", "mistral_hub_demo"
)
EXAMPLES_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


@pytest.fixture(scope="module")
def causal_lm():
    return MistralCausalLM.from_preset(PRESET_DIR)


def test_preset_is_small():
    size = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(PRESET_DIR)
        for name in names
    )
    assert size < 5 * 1024**2


def test_vocabulary_has_mistral_special_tokens(causal_lm):
    tokenizer = causal_lm.preprocessor.tokenizer
    assert [tokenizer.id_to_token(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tokenizer.vocabulary_size() == causal_lm.backbone.vocabulary_size
    text = "class Foo:\n    pass  # 42 ünïcode"
    assert tokenizer.detokenize(tokenizer.tokenize(text)) == text


def test_generates_the_zen_of_python(causal_lm):
    # The training corpus repeats the Zen, so greedy decoding recites it:
    # a check of the weights and of the whole generation pipeline.
    output = causal_lm.generate(
        "The Zen of Python", max_new_tokens=32, sampler="greedy"
    )
    assert output.startswith(
        "The Zen of Python, by Tim Peters\n\nBeautiful is better than ugly.\n"
        "Explicit is better than implicit."
    )


@pytest.mark.slow
def test_generate_example_runs():
    spec = importlib.util.spec_from_file_location(
        "generate_example", os.path.join(EXAMPLES_DIR, "generate.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        module.main()
    printed = stdout.getvalue()
    for prompt in module.PROMPTS:
        assert repr(prompt) in printed
    assert "tokens/s" in printed
