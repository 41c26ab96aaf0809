"""Exporting mistral_hub models and tokenizers to the transformers format.

The output directory loads with `transformers.AutoModelForCausalLM` /
`MistralForCausalLM.from_pretrained` and, for SentencePiece vocabularies,
`AutoTokenizer.from_pretrained`:

- `config.json` with the real `head_dim`, `sliding_window`, `rope_theta`
  (and `rope_parameters`), RoPE scaling, and the variables' dtype;
- `model.safetensors`, or `model-0000N-of-0000M.safetensors` shards plus
  `model.safetensors.index.json` above `max_shard_size`, written tensor by
  tensor in the variables' dtype;
- `tokenizer.model` + `tokenizer_config.json` + `special_tokens_map.json`
  (SentencePiece) or `tekken.json` (Tekken);
- `generation_config.json` for a causal LM (BOS and stop ids).

Writes are atomic like `save_to_preset`.
"""

import json
import os
import re

import keras

from mistral_hub.utils.presets import registry
from mistral_hub.utils.presets.writing import preset_writer
from mistral_hub.utils.transformers.safetensors_io import write_sharded_safetensors

_MODEL_FILE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")


def _is_transformers_dir(path):
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                return json.load(f).get("model_type") == "mistral"
        except (OSError, ValueError, AttributeError):
            return False
    return any(
        os.path.isfile(os.path.join(path, name))
        for name in ("tokenizer_config.json", "tokenizer.model", "tekken.json")
    )


def _fresh(directory, name):
    """A path to write to that is not a hard link to the previous version."""
    path = os.path.join(directory, name)
    if os.path.lexists(path):
        os.remove(path)
    return path


def _hf_shape(hf_name, shape):
    """The transformers shape of a variable of `shape` (see `hf_weight_map`)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 1 or hf_name == "model.embed_tokens.weight":
        return shape
    if len(shape) == 2:
        return shape[::-1]
    if hf_name.endswith("o_proj.weight"):  # (heads, head_dim, hidden)
        return (shape[2], shape[0] * shape[1])
    return (shape[1] * shape[2], shape[0])  # (hidden, heads, head_dim)


def _check_not_quantized(backbone):
    """Refuses quantized backbones, before anything is written.

    transformers' `MistralForCausalLM` holds float weights. Dequantized
    weights would not give the quantized model's outputs either (Keras'
    int8 layers also quantize their inputs), so the export would silently
    be another model.
    """
    for layer in backbone._flatten_layers(include_self=False):
        if layer.quantization_mode is not None:
            raise ValueError(
                "`export_to_transformers` writes float weights, but this model "
                f"is quantized (mode {layer.quantization_mode!r}, e.g. layer "
                f"`{layer.path}`). transformers cannot load Keras' quantized "
                "weights, and dequantized ones would not reproduce the "
                "quantized model's outputs. Export the model before calling "
                "`quantize()` (e.g. reload the float preset, fine-tune, "
                "export), then quantize in transformers if needed."
            )


def _write_model(directory, backbone, max_shard_size, max_position_embeddings, special_ids):
    for name in os.listdir(directory):
        if _MODEL_FILE.match(name):
            os.remove(os.path.join(directory, name))
    converter = registry.backbone_converter(backbone)
    if converter is None:
        raise ValueError(
            "`export_to_transformers` takes a backbone of a registered model "
            f"family. Received: {type(backbone).__name__}"
        )
    dtype = keras.backend.standardize_dtype(backbone.token_embedding.embeddings.dtype)
    config = converter.hf_config_from_backbone(
        backbone, max_position_embeddings=max_position_embeddings, dtype=dtype
    )
    config.update(special_ids)
    entries = []
    for hf_name, variable, _, to_hf in converter.hf_weight_map(backbone):
        # A LoRA layer's `kernel` is not a variable but the merged tensor
        # `W + (alpha / rank) * A @ B` in the compute dtype, which is what
        # the layer multiplies by; it is written in the model's dtype.
        tensor_dtype = dtype
        if isinstance(variable, keras.Variable):
            tensor_dtype = keras.backend.standardize_dtype(variable.dtype)

        def fetch(variable=variable, to_hf=to_hf):
            return to_hf(keras.ops.convert_to_numpy(variable))

        entries.append((hf_name, _hf_shape(hf_name, variable.shape), tensor_dtype, fetch))
    write_sharded_safetensors(directory, entries, max_shard_size)
    with open(_fresh(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def write_sentencepiece_for_transformers(directory, tokenizer, model_max_length):
    """Writes `tokenizer.model` for transformers' `LlamaTokenizer`.

    Returns:
        The `tokenizer_config.json` dict.
    """
    with open(_fresh(directory, "tokenizer.model"), "wb") as f:
        f.write(tokenizer.proto)
    special = {}
    for attribute, key in (("start_token", "bos_token"), ("end_token", "eos_token")):
        if getattr(tokenizer, attribute, None) is not None:
            special[key] = getattr(tokenizer, attribute)
    unk = tokenizer.id_to_token(0)
    special["unk_token"] = unk
    added = {}
    for token in [unk] + [special[k] for k in ("bos_token", "eos_token") if k in special]:
        added[str(tokenizer.token_to_id(token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": added,
        **special,
    }
    with open(_fresh(directory, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    return config


def _write_tokenizer(directory, tokenizer, model_max_length):
    for name in ("tokenizer.model", "tekken.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.json"):
        path = os.path.join(directory, name)
        if os.path.lexists(path):
            os.remove(path)
    # Each model family registers the tokenizers it can export.
    writer = registry.transformers_tokenizer_writer(tokenizer)
    if writer is None:
        raise ValueError(
            "Only SentencePiece (`MistralTokenizer`) and Tekken "
            "(`MistralTekkenTokenizer`) tokenizers can be exported. Received: "
            f"{type(tokenizer).__name__}"
        )
    config = writer(directory, tokenizer, model_max_length)
    with open(_fresh(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def export_to_transformers(
    obj,
    path,
    max_shard_size="5GB",
    overwrite=False,
    max_position_embeddings=32768,
):
    """Writes a backbone, causal LM, preprocessor or tokenizer for transformers.

    A backbone writes the model files, a tokenizer (or preprocessor) the
    tokenizer files, a causal LM both plus `generation_config.json`.
    Exporting into an existing transformers directory adds to it (e.g. a
    backbone, then its tokenizer). LoRA adapters are merged into the
    weights they adapt, as Keras computes them (`W + alpha / rank * A @ B`);
    quantized models are refused.

    Args:
        obj: a `MistralBackbone`, `MistralCausalLM`, preprocessor or
            Mistral tokenizer.
        path: str. Output directory.
        max_shard_size: bytes or a string like `"5GB"`; larger models are
            sharded.
        overwrite: bool. Required to write into a non-empty directory that is
            not a transformers Mistral directory; replaces its contents.
        max_position_embeddings: int. Recorded in `config.json`.

    Raises:
        ValueError: for a quantized model (nothing is written), or an
            object that cannot be exported.

    Example:
    >>> import tempfile
    >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
    >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=1,
    ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
    ...     num_key_value_heads=1)
    >>> directory = tempfile.mkdtemp() + "/hf"
    >>> export_to_transformers(backbone, directory)
    >>> sorted(os.listdir(directory))
    ['config.json', 'model.safetensors']
    """
    # The base classes say what they are in `preset_kind`.
    kind = getattr(obj, "preset_kind", None)
    if kind == "backbone":
        backbone, tokenizer, task = obj, None, None
    elif kind == "task":
        backbone, task = obj.backbone, obj
        tokenizer = obj.preprocessor.tokenizer if obj.preprocessor is not None else None
    elif kind == "preprocessor":
        backbone, tokenizer, task = None, obj.tokenizer, None
    elif kind == "tokenizer":
        backbone, tokenizer, task = None, obj, None
    else:
        raise ValueError(
            "`export_to_transformers` takes a backbone, a task, a preprocessor "
            f"or a tokenizer. Received: {type(obj).__name__}"
        )
    if backbone is not None:
        _check_not_quantized(backbone)
    special_ids = {}
    if tokenizer is not None and getattr(tokenizer, "start_token_id", None) is not None:
        special_ids = {
            "bos_token_id": int(tokenizer.start_token_id),
            "eos_token_id": int(tokenizer.end_token_id),
        }
    with preset_writer(
        path,
        overwrite,
        mergeable=_is_transformers_dir,
        kind="transformers Mistral directory",
        part=None if task is not None else kind,
        # Only a task's export writes a generation config.
        task_file="generation_config.json",
    ) as writer:
        directory = writer.directory
        if backbone is not None:
            _write_model(directory, backbone, max_shard_size, max_position_embeddings, special_ids)
        if tokenizer is not None:
            _write_tokenizer(directory, tokenizer, max_position_embeddings)
        if task is not None:
            stop_ids = getattr(task, "default_stop_token_ids", None)
            generation = {"_from_model_config": False}
            if special_ids:
                generation["bos_token_id"] = special_ids["bos_token_id"]
                generation["eos_token_id"] = special_ids["eos_token_id"]
            if stop_ids:
                ids = [int(i) for i in stop_ids]
                generation["eos_token_id"] = ids[0] if len(ids) == 1 else ids
            with open(_fresh(directory, "generation_config.json"), "w") as f:
                json.dump(generation, f, indent=2)
