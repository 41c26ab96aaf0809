"""Keras 3 native Mistral language models for TensorFlow, JAX and PyTorch."""

import importlib

__version__ = "0.1.0"

# Imported on first use (PEP 562), so that `import mistral_hub.cli` does not
# import Keras before the command line has chosen the backend.
_SUBMODULES = ("models", "samplers", "tokenizers")
_MODELS = (
    "Backbone",
    "CausalLM",
    "CausalLMPreprocessor",
    "MistralBackbone",
    "MistralCausalLM",
    "MistralCausalLMPreprocessor",
    "MistralHFTokenizer",
    "MistralTekkenTokenizer",
    "MistralTokenizer",
    "Preprocessor",
    "Task",
)
_UTILS = ("upload_preset",)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"mistral_hub.{name}")
    if name in _MODELS:
        return getattr(importlib.import_module("mistral_hub.models"), name)
    if name in _UTILS:
        return getattr(importlib.import_module("mistral_hub.utils.preset_utils"), name)
    raise AttributeError(f"module 'mistral_hub' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES, *_MODELS, *_UTILS])


__all__ = [*_SUBMODULES, *_MODELS, *_UTILS]
