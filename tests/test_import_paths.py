"""keras_hub's import paths for the Mistral classes exist in mistral_hub."""

import os
import subprocess
import sys

import pytest

import mistral_hub
from mistral_hub.models.mistral.mistral_hf_tokenizer import MistralHFTokenizer
from mistral_hub.models.mistral.mistral_tekken_tokenizer import MistralTekkenTokenizer
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.tokenizers.sentence_piece_tokenizer import SentencePieceTokenizer
from mistral_hub.tokenizers.tokenizer import Tokenizer
from mistral_hub.utils.preset_utils import upload_preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (module path under the package, name, our object); keras_hub exports each.
KERAS_HUB_PATHS = [
    ("tokenizers", "MistralTokenizer", MistralTokenizer),
    ("tokenizers", "MistralTekkenTokenizer", MistralTekkenTokenizer),
    ("tokenizers", "SentencePieceTokenizer", SentencePieceTokenizer),
    ("tokenizers", "Tokenizer", Tokenizer),
    ("models", "Tokenizer", Tokenizer),
    ("models", "MistralTokenizer", MistralTokenizer),
    ("models", "MistralTekkenTokenizer", MistralTekkenTokenizer),
    ("", "upload_preset", upload_preset),
]


@pytest.mark.parametrize("module, name, expected", KERAS_HUB_PATHS)
def test_keras_hub_paths(module, name, expected):
    keras_hub = pytest.importorskip("keras_hub")

    def resolve(package):
        return getattr(package, module) if module else package

    assert hasattr(resolve(keras_hub), name)
    assert getattr(resolve(mistral_hub), name) is expected


def test_our_tokenizer_json_tokenizer_is_exported():
    assert mistral_hub.tokenizers.MistralHFTokenizer is MistralHFTokenizer
    assert mistral_hub.models.MistralHFTokenizer is MistralHFTokenizer
    assert mistral_hub.MistralHFTokenizer is MistralHFTokenizer
    assert {"MistralTokenizer", "MistralHFTokenizer"} <= set(dir(mistral_hub.tokenizers))


def test_function_calling_guide_import_in_a_fresh_interpreter():
    # keras.io's Mistral function-calling guide imports the tokenizer from
    # `tokenizers` first; the Mistral tokenizers import that package's base
    # classes, so this must not be an import cycle.
    script = (
        f"import sys; sys.path.insert(0, {ROOT!r})\n"
        "from mistral_hub.tokenizers import MistralTokenizer\n"
        "import mistral_hub.models.mistral.mistral_tokenizer as module\n"
        "assert MistralTokenizer is module.MistralTokenizer\n"
        "tokenizer = MistralTokenizer.from_preset('mistral_hub_demo')\n"
        "print(tokenizer.detokenize(tokenizer('Hello world')))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("Hello world")
