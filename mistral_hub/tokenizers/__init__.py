import importlib

from mistral_hub.tokenizers.sentence_piece_tokenizer import SentencePieceTokenizer
from mistral_hub.tokenizers.tokenizer import Tokenizer

# The Mistral tokenizers live with the model (as in keras_hub) and import
# this package's base classes: load them on first use to avoid an import
# cycle.
_MISTRAL = {
    "MistralTokenizer": "mistral_hub.models.mistral.mistral_tokenizer",
    "MistralTekkenTokenizer": "mistral_hub.models.mistral.mistral_tekken_tokenizer",
    "MistralHFTokenizer": "mistral_hub.models.mistral.mistral_hf_tokenizer",
}


def __getattr__(name):
    if name in _MISTRAL:
        return getattr(importlib.import_module(_MISTRAL[name]), name)
    raise AttributeError(f"module 'mistral_hub.tokenizers' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_MISTRAL])


__all__ = ["SentencePieceTokenizer", "Tokenizer", *_MISTRAL]
