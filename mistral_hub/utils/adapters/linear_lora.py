"""LoRA adapters of transformers-style linear layers, as Keras adapters.

PEFT and mistral-finetune adapt a linear layer `y = x @ W.T` (`W` of shape
`(out, in)`) with `lora_A` `(r, in)`, `lora_B` `(out, r)` and a scale `s`:
`W + s * lora_B @ lora_A`. Keras' `enable_lora(rank)` adds `lora_kernel_a`
(the kernel's input axes, then the rank) and `lora_kernel_b` (the rank, then
the kernel's last axis) and adds `(lora_alpha / rank) * a @ b` to the
kernel:

- MLP kernels `(in, out)` and the attention output kernel
  `(heads, head_dim, hidden)` factor the same way: `a = lora_A.T` (reshaped),
  `b = s * lora_B.T`, at rank `r`.
- Query/key/value kernels `(hidden, heads, head_dim)` keep one `a` per head
  but share `b` `(rank, head_dim)` across heads, so PEFT's update, which
  mixes heads through `lora_B`, needs rank `min(heads * r, head_dim)` to be
  represented exactly: `b` spans the head-size space used by all heads'
  rows of `lora_B`, and each head's `a` is its update expressed in that
  basis.

All adapters of a backbone get the largest of these ranks (smaller ones are
padded with zeros, which changes nothing), and the scale `s` goes into `b`
with Keras' default `lora_alpha` (the rank, a scale of 1): keras_hub's
`.lora.h5` format, which `save_lora_weights` writes, holds one rank and no
alpha, so the adapters save and load without changing.
"""

import numpy as np

# transformers module name (after `model.layers.<i>.`) -> Keras layer name.
LAYER_NAMES = {
    "self_attn.q_proj": "query",
    "self_attn.k_proj": "key",
    "self_attn.v_proj": "value",
    "self_attn.o_proj": "attention_output",
    "mlp.gate_proj": "feedforward_gate_dense",
    "mlp.up_proj": "feedforward_intermediate_dense",
    "mlp.down_proj": "feedforward_output_dense",
}


def backbone_of(model):
    """The backbone of `model` (a Mistral backbone or a task holding one)."""
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "transformer_layers") or not hasattr(backbone, "enable_lora"):
        raise TypeError(
            "Expected a `MistralBackbone` or a task holding one. "
            f"Received: {type(model).__name__}"
        )
    return backbone


def projection_layers(backbone):
    """`{transformers module name: (Keras layer, kind, kernel shape)}`.

    `kind` is `"heads_in"` for a `(hidden, heads, head_dim)` kernel,
    `"heads_out"` for `(heads, head_dim, hidden)` and `"dense"` for
    `(in, out)`; the shape is the logical (unquantized) one.

    Example:
    >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
    >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=1,
    ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
    ...     num_key_value_heads=1)
    >>> layer, kind, shape = projection_layers(backbone)["model.layers.0.self_attn.k_proj"]
    >>> layer.name, kind, shape
    ('key', 'heads_in', (8, 1, 4))
    """
    hidden, head_dim = backbone.hidden_dim, backbone.resolved_head_dim
    query_heads, kv_heads = backbone.num_query_heads, backbone.num_key_value_heads
    intermediate = backbone.intermediate_dim
    shapes = {
        "self_attn.q_proj": ("heads_in", (hidden, query_heads, head_dim)),
        "self_attn.k_proj": ("heads_in", (hidden, kv_heads, head_dim)),
        "self_attn.v_proj": ("heads_in", (hidden, kv_heads, head_dim)),
        "self_attn.o_proj": ("heads_out", (query_heads, head_dim, hidden)),
        "mlp.gate_proj": ("dense", (hidden, intermediate)),
        "mlp.up_proj": ("dense", (hidden, intermediate)),
        "mlp.down_proj": ("dense", (intermediate, hidden)),
    }
    layers = {}
    for i, block in enumerate(backbone.transformer_layers):
        by_name = {layer.name: layer for layer in block._flatten_layers(include_self=False)}
        for module, name in LAYER_NAMES.items():
            kind, shape = shapes[module]
            layers[f"model.layers.{i}.{module}"] = (by_name[name], kind, shape)
    return layers


def _keras_factors(kind, shape, lora_a, lora_b, scale):
    """Keras `(lora_kernel_a, lora_kernel_b)` with `a @ b` equal to the update."""
    lora_a = np.asarray(lora_a, "float64")
    lora_b = np.asarray(lora_b, "float64")
    if kind == "dense":
        return lora_a.T, scale * lora_b.T
    if kind == "heads_out":
        return lora_a.T.reshape(shape[:2] + (-1,)), scale * lora_b.T
    hidden, heads, head_dim = shape
    # Head `u`'s update is `s * lora_A.T @ rows_u`, `rows_u` being that
    # head's `(r, head_dim)` block of `lora_B.T`. A basis of the space all
    # the rows span serves as the shared `b`.
    rows = lora_b.T.reshape(-1, heads, head_dim)
    stacked = rows.transpose(1, 0, 2).reshape(-1, head_dim)
    rank = min(stacked.shape[0], head_dim)
    basis = np.linalg.svd(stacked, full_matrices=False)[2][:rank]  # (rank, head_dim)
    a = scale * np.einsum("ri,ruh,kh->iuk", lora_a, rows, basis, optimize=True)
    return a, basis


def set_adapters(model, adapters, what):
    """Adds LoRA adapters equal to `adapters` to a backbone, exactly.

    The backbone is left as `enable_lora` leaves it (weights frozen, the
    adapters trainable), with adapters on every layer named like a target
    (those `adapters` does not cover start at zero). Everything is checked
    before the model changes.

    Args:
        model: a `MistralBackbone`, or a task holding one.
        adapters: dict `{transformers module name: (lora_A, lora_B, scale)}`
            with `lora_A` `(r, in)` and `lora_B` `(out, r)` arrays.
        what: str. How to name the adapter in error messages.

    Returns:
        The Keras rank of the adapters.

    Raises:
        TypeError: if `model` is not a Mistral backbone or task.
        ValueError: for an unknown module, a shape mismatch, a backbone
            that already has adapters, or a layer quantized in a mode Keras
            cannot add adapters to.
    """
    backbone = backbone_of(model)
    layers = projection_layers(backbone)
    adapted = [
        layer.path
        for layer in backbone._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    ]
    if adapted:
        raise ValueError(
            f"Cannot load {what}: the backbone already has LoRA adapters (on "
            f"{', '.join(adapted[:3])}{', ...' if len(adapted) > 3 else ''}). "
            "Load it onto a backbone without adapters, or call `merge_lora()` "
            "first to fold the existing ones into the weights."
        )
    unknown = sorted(set(adapters) - set(layers))
    if unknown:
        raise ValueError(
            f"{what} adapts modules this backbone does not have: "
            f"{', '.join(unknown[:5])}. The backbone has {backbone.num_layers} "
            "layers."
        )
    factors = {}
    for module, (lora_a, lora_b, scale) in adapters.items():
        layer, kind, shape = layers[module]
        if layer.quantization_mode not in (None, "int8", "int4"):
            raise ValueError(
                f"Cannot load {what}: Keras adds LoRA adapters to float, int8 "
                f"and int4 layers, but `{layer.path}` is "
                f"{layer.quantization_mode!r}-quantized."
            )
        inputs = int(np.prod(shape[:-1])) if kind == "heads_out" else shape[0]
        outputs = shape[1] * shape[2] if kind == "heads_in" else shape[-1]
        lora_a, lora_b = np.asarray(lora_a), np.asarray(lora_b)
        if (
            lora_a.ndim != 2
            or lora_a.shape[1] != inputs
            or lora_b.shape != (outputs, lora_a.shape[0])
        ):
            raise ValueError(
                f"{what} has `lora_A` and `lora_B` of shapes {lora_a.shape} and "
                f"{lora_b.shape} for `{module}`, a ({outputs}, {inputs}) linear "
                f"layer here: expected (r, {inputs}) and ({outputs}, r)."
            )
        factors[module] = _keras_factors(kind, shape, lora_a, lora_b, scale)
    if not factors:
        raise ValueError(f"{what} holds no LoRA weights.")
    keras_rank = max(a.shape[-1] for a, _ in factors.values())
    names = sorted({layers[module][0].name for module in factors})
    backbone.enable_lora(keras_rank, target_layer_names=names)
    for module, (a, b) in factors.items():
        layer = layers[module][0]
        padding = keras_rank - a.shape[-1]
        a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, padding)])
        b = np.pad(b, [(0, padding), (0, 0)])
        # The scale is in `b`; undo the one Keras applies.
        b = b / (layer.lora_alpha / layer.lora_rank)
        layer.lora_kernel_a.assign(a.astype("float32"))
        layer.lora_kernel_b.assign(b.astype("float32"))
    return keras_rank


def read_lora_pairs(checkpoint, key_pattern, what):
    """Reads a checkpoint's LoRA factor pairs.

    Args:
        checkpoint: a `SafetensorsCheckpoint`.
        key_pattern: compiled regex matching every tensor name, with the
            groups `(layer index, module name, "A" or "B")`.
        what: str. The adapter's description, for error messages.

    Returns:
        `{(layer, module): (lora_a, lora_b)}` with `layer` an int, in order.

    Raises:
        ValueError: for a tensor the pattern does not match, or a module
            with only one of its two factors.
    """
    pairs = {}
    unsupported = []
    for key in checkpoint.keys():
        match = key_pattern.match(key)
        if match is None:
            unsupported.append(key)
            continue
        layer, module, matrix = match.groups()
        pairs.setdefault((int(layer), module), {})[matrix] = key
    if unsupported:
        raise ValueError(
            f"{what} holds tensors other than LoRA adapters of the attention "
            f"and MLP projections: {', '.join(sorted(unsupported)[:5])}"
            f"{', ...' if len(unsupported) > 5 else ''}."
        )
    factors = {}
    for (layer, module), keys in sorted(pairs.items()):
        if set(keys) != {"A", "B"}:
            raise ValueError(
                f"{what} has only `lora_{''.join(keys)}` for `layers.{layer}.{module}`."
            )
        factors[layer, module] = (
            checkpoint.get_tensor(keys["A"]),
            checkpoint.get_tensor(keys["B"]),
        )
    return factors
