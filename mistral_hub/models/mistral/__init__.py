"""The Mistral model family, which registers itself with the preset machinery.

Registered here: the classes presets may hold (with keras_hub's names and
constructor keys, so saved presets load in keras_hub), the built-in presets,
the transformers (`model_type: "mistral"`) and Mistral-format checkpoint
converter, and the tokenizers `export_to_transformers` writes.
"""

from mistral_hub.models.mistral import mistral_presets
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_checkpoint_conversion import (
    MistralCheckpointConverter,
)
from mistral_hub.models.mistral.mistral_checkpoint_conversion import (
    write_tekken_for_transformers,
)
from mistral_hub.models.mistral.mistral_hf_tokenizer import MistralHFTokenizer
from mistral_hub.models.mistral.mistral_tekken_tokenizer import MistralTekkenTokenizer
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.tokenizers.sentence_piece_tokenizer import SentencePieceTokenizer
from mistral_hub.utils.presets import registry
from mistral_hub.utils.transformers.export import write_sentencepiece_for_transformers

_KERAS_HUB = "keras_hub.src.models.mistral"
registry.register_class(
    MistralBackbone,
    f"{_KERAS_HUB}.mistral_backbone",
    (
        "name", "trainable", "dtype", "vocabulary_size", "num_layers",
        "num_query_heads", "hidden_dim", "intermediate_dim",
        "rope_max_wavelength", "rope_scaling_factor", "num_key_value_heads",
        "sliding_window", "head_dim", "layer_norm_epsilon", "dropout",
    ),
)  # fmt: skip
registry.register_class(
    MistralCausalLM,
    f"{_KERAS_HUB}.mistral_causal_lm",
    ("backbone", "preprocessor", "name"),
)
registry.register_class(
    MistralCausalLMPreprocessor,
    f"{_KERAS_HUB}.mistral_causal_lm_preprocessor",
    (
        "name", "trainable", "dtype", "tokenizer", "config_file",
        "sequence_length", "add_start_token", "add_end_token",
    ),
)  # fmt: skip
registry.register_class(
    MistralTokenizer,
    f"{_KERAS_HUB}.mistral_tokenizer",
    (
        "name", "trainable", "dtype", "config_file", "proto",
        "sequence_length", "add_bos", "add_eos",
    ),
)  # fmt: skip
# keras_hub stores Tekken vocabularies as BPE `vocabulary.json` +
# `merges.txt`; ours is the original `tekken.json`, which keras_hub cannot
# read, so ours is saved under the mistral_hub name.
registry.register_class(MistralTekkenTokenizer, f"{_KERAS_HUB}.mistral_tokenizer")
# A transformers `tokenizer.json`; keras_hub has no such tokenizer.
registry.register_class(MistralHFTokenizer)
registry.register_interchangeable_tokenizers(
    (MistralTokenizer, MistralTekkenTokenizer, MistralHFTokenizer)
)
registry.register_presets(mistral_presets.backbone_presets, MistralBackbone)
registry.register_checkpoint_converter(MistralCheckpointConverter())
registry.register_transformers_tokenizer_writer(
    SentencePieceTokenizer, write_sentencepiece_for_transformers
)
registry.register_transformers_tokenizer_writer(
    MistralTekkenTokenizer, write_tekken_for_transformers
)
