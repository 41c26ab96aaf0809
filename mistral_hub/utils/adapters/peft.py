"""PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`)."""

import math
import re

from mistral_hub.utils import hub
from mistral_hub.utils.presets.files import load_json
from mistral_hub.utils import validation
from mistral_hub.utils.adapters import linear_lora
from mistral_hub.utils.transformers.safetensors_io import SafetensorsCheckpoint

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT's older pickled weights file, refused (loading it could run code).
_PICKLED_WEIGHTS_FILE = "adapter_model.bin"
# `base_model.model.` wraps the transformers model; `model.` is there when
# the adapter was trained on `MistralForCausalLM` rather than `MistralModel`.
_LORA_KEY = re.compile(
    r"^base_model\.model\.(?:model\.)?layers\.(\d+)\."
    r"(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.lora_([AB])\.weight$"
)
# Options that change what the adapter computes beyond `W + s * B @ A`.
_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "lora_bias": "LoRA biases",
    "layer_replication": "layer replication",
    "use_qalora": "QALoRA",
}


def _source(adapter):
    source = hub.resolve_source(adapter)
    if source is None:
        raise FileNotFoundError(
            f"Adapter directory `{adapter}` does not exist. Pass a local "
            "directory or an 'hf://owner/repo[@revision]' handle."
        )
    return source


def _scale_of(config, module, rank, what):
    # PEFT matches pattern keys against the end of the module name.
    alpha = config["lora_alpha"]
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    try:
        alpha = validation.check_positive_float("lora_alpha", alpha)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank)
    return alpha / rank


def load_peft_adapter(model, adapter):
    """Loads a PEFT LoRA adapter onto a Mistral backbone.

    Reads `adapter_config.json` and `adapter_model.safetensors` as written
    by `PeftModel.save_pretrained` for a transformers Mistral model, with
    LoRA on any of `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
    `up_proj` and `down_proj`, in any layers, with its `r`, `lora_alpha`,
    `use_rslora`, `rank_pattern` and `alpha_pattern`. The backbone then
    computes what `PeftModel` computes, and is left as `enable_lora` leaves
    it: weights frozen, adapters trainable, so that `fit()` continues the
    training, `save_lora_weights()` saves the adapters and `merge_lora()`
    folds them into the weights.

    The adapters are Keras LoRA adapters, whose query/key/value factors
    differ from PEFT's: PEFT's rank-`r` update of those projections needs
    Keras rank `min(heads * r, head_dim)` (see
    `mistral_hub.utils.adapters.linear_lora`); all adapters share the
    largest rank needed. For inference only, `merge_lora()` removes that
    cost. The base model may be float or quantized (`int8`, `int4`).

    Args:
        model: a `MistralBackbone`, or a task holding one, without LoRA
            adapters.
        adapter: str or path. A local directory, or an
            `hf://owner/repo[@revision]` handle (or `kaggle://...`).

    Raises:
        FileNotFoundError: if the directory or one of its files is missing.
        ValueError: for another PEFT method, an option that changes the
            computation (DoRA, LoRA biases...), weights of other modules
            (`modules_to_save`, embeddings), shapes that do not match the
            backbone, or a backbone that already has adapters. Nothing is
            changed then.

    Example:
    >>> import tempfile, numpy as np
    >>> import peft, transformers
    >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
    >>> hf_model = transformers.MistralForCausalLM(transformers.MistralConfig(
    ...     vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    >>> adapter_dir = tempfile.mkdtemp()
    >>> peft.get_peft_model(hf_model, peft.LoraConfig(
    ...     r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter_dir)
    >>> backbone = MistralBackbone(vocabulary_size=32, num_layers=1,
    ...     num_query_heads=2, hidden_dim=16, intermediate_dim=32,
    ...     num_key_value_heads=1)
    >>> load_peft_adapter(backbone, adapter_dir)
    >>> sorted({w.path.split("/")[-2] for w in backbone.trainable_weights})
    ['query', 'value']
    """
    source = _source(adapter)
    what = f"PEFT adapter `{source.description}`"
    config = load_json(source, ADAPTER_CONFIG_FILE)
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise ValueError(
            f"{what} is a {peft_type!r} adapter; only LoRA adapters "
            "(`peft_type: \"LORA\"`) can be loaded."
        )
    for option, feature in _UNSUPPORTED_OPTIONS.items():
        if config.get(option):
            raise ValueError(
                f"{what} uses {feature} (`{option}` in {ADAPTER_CONFIG_FILE}), "
                "which Keras LoRA adapters do not implement."
            )
    if "lora_alpha" not in config:
        raise ValueError(f"{what}: `lora_alpha` is missing from {ADAPTER_CONFIG_FILE}.")
    if not source.exists(ADAPTER_WEIGHTS_FILE) and source.exists(_PICKLED_WEIGHTS_FILE):
        raise ValueError(
            f"{what} has only `{_PICKLED_WEIGHTS_FILE}`, a pickle; mistral_hub "
            "never loads pickles (they can run code). Save the adapter with "
            "`save_pretrained(..., safe_serialization=True)`."
        )
    checkpoint = SafetensorsCheckpoint(source, files=[ADAPTER_WEIGHTS_FILE])
    adapters = {}
    for (layer, module), (lora_a, lora_b) in linear_lora.read_lora_pairs(
        checkpoint, _LORA_KEY, what
    ).items():
        module = f"model.layers.{layer}.{module}"
        adapters[module] = (lora_a, lora_b, _scale_of(config, module, lora_a.shape[0], what))
    linear_lora.set_adapters(model, adapters, what)
