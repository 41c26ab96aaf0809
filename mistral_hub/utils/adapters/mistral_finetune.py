"""mistral-finetune LoRA checkpoints (`lora.safetensors`)."""

import os
import re

from mistral_hub.utils import hub
from mistral_hub.utils.presets.files import load_json
from mistral_hub.utils import validation
from mistral_hub.utils.adapters import linear_lora
from mistral_hub.utils.transformers import mistral_format
from mistral_hub.utils.transformers.safetensors_io import SafetensorsCheckpoint

LORA_WEIGHTS_FILE = "lora.safetensors"
PARAMS_FILE = "params.json"
# mistral-finetune's default `lora.scaling`, which mistral-inference's
# `load_lora` also assumes when none is given.
DEFAULT_SCALING = 2.0
_LORA_KEY = re.compile(
    r"^layers\.(\d+)\.(attention\.w[qkvo]|feed_forward\.w[123])\.lora_([AB])\.weight$"
)


def _native_modules():
    """`{"attention.wq": "self_attn.q_proj", ...}`, from the tensor names."""
    modules = {}
    for module in linear_lora.LAYER_NAMES:
        native = mistral_format.mistral_tensor_name(f"model.layers.0.{module}.weight")
        modules[native[len("layers.0."):-len(".weight")]] = module
    return modules


def _locate(path):
    """`(source, weights file)` for a file path, a directory or a handle."""
    if isinstance(path, (str, os.PathLike)) and os.path.isfile(os.path.expanduser(path)):
        local = os.path.abspath(os.path.expanduser(path))
        return hub.LocalSource(os.path.dirname(local)), os.path.basename(local)
    source = hub.resolve_source(path)
    if source is None:
        raise FileNotFoundError(
            f"LoRA checkpoint `{path}` does not exist. Pass `{LORA_WEIGHTS_FILE}`, "
            "its directory or an 'hf://owner/repo[@revision]' handle."
        )
    return source, LORA_WEIGHTS_FILE


def load_mistral_lora(model, path, scaling=None):
    """Loads a mistral-finetune LoRA checkpoint onto a Mistral backbone.

    mistral-finetune (`save_adapters: True`) writes `lora.safetensors` with
    `layers.<i>.attention.w{q,k,v,o}` and `layers.<i>.feed_forward.w{1,2,3}`
    adapters (`lora_A`, `lora_B`) in Mistral's own layout, next to a
    `params.json` whose `lora.scaling` scales them. Mistral rotates
    interleaved query/key pairs where mistral_hub rotates halves, so the
    rows of the `wq`/`wk` `lora_B` matrices are permuted as the Mistral
    checkpoint loader permutes `wq`/`wk`. The backbone then computes what
    mistral-inference computes with the adapter merged, and is left as
    `enable_lora` leaves it (see `load_peft_adapter` for the Keras ranks).

    Args:
        model: a `MistralBackbone`, or a task holding one, without LoRA
            adapters.
        path: str or path. `lora.safetensors`, the checkpoint directory
            holding it, or an `hf://owner/repo[@revision]` handle.
        scaling: float or None. The adapter scale; None reads
            `lora.scaling` from `params.json` next to the weights, and
            falls back to mistral-finetune's default, 2.0.

    Raises:
        FileNotFoundError: if the checkpoint is missing.
        ValueError: for an invalid `scaling`, tensors other than LoRA
            adapters of the attention and MLP projections, shapes that do
            not match the backbone, or a backbone that already has adapters.
            Nothing is changed then.

    Example:
    >>> import tempfile, numpy as np
    >>> from safetensors.numpy import save_file
    >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
    >>> backbone = MistralBackbone(vocabulary_size=32, num_layers=1,
    ...     num_query_heads=2, hidden_dim=16, intermediate_dim=32,
    ...     num_key_value_heads=1)
    >>> path = tempfile.mkdtemp() + "/lora.safetensors"
    >>> save_file({"layers.0.feed_forward.w2.lora_A.weight": np.ones((4, 32), "float32"),
    ...     "layers.0.feed_forward.w2.lora_B.weight": np.zeros((16, 4), "float32")}, path)
    >>> load_mistral_lora(backbone, path)
    >>> [w.path for w in backbone.trainable_weights]  # doctest: +NORMALIZE_WHITESPACE
    ['transformer_layer_0/feedforward_output_dense/lora_kernel_a',
     'transformer_layer_0/feedforward_output_dense/lora_kernel_b']
    """
    source, weights_file = _locate(path)
    what = f"LoRA checkpoint `{source.description}`"
    if scaling is None and source.exists(PARAMS_FILE):
        lora_params = load_json(source, PARAMS_FILE).get("lora") or {}
        scaling = lora_params.get("scaling")
    try:
        scaling = validation.check_positive_float(
            "scaling", DEFAULT_SCALING if scaling is None else scaling
        )
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    backbone = linear_lora.backbone_of(model)
    heads = {
        "attention.wq": backbone.num_query_heads,
        "attention.wk": backbone.num_key_value_heads,
    }
    native_modules = _native_modules()
    checkpoint = SafetensorsCheckpoint(source, files=[weights_file])
    adapters = {}
    for (layer, module), (lora_a, lora_b) in linear_lora.read_lora_pairs(
        checkpoint, _LORA_KEY, what
    ).items():
        if module in heads and lora_b.ndim == 2 and lora_b.shape[0] % heads[module] == 0:
            lora_b = mistral_format.rope_permute(lora_b, heads[module])
        adapters[f"model.layers.{layer}.{native_modules[module]}"] = (lora_a, lora_b, scaling)
    linear_lora.set_adapters(backbone, adapters, what)
