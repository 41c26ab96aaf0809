"""The Mistral checkpoint format (mistral-inference): tensor names, RoPE rows.

Mistral's `consolidated.safetensors` names tensors its own way
(`layers.3.attention.wq.weight`) and lays the q/k projection rows of each
head out for interleaved RoPE; transformers (and mistral_hub) use
half-split RoPE. The format is shared by the model families that ship
Mistral checkpoints; what a family's `params.json` means is the family's
(see its `CheckpointConverter`).
"""

import re

_HF_TO_MISTRAL = [
    (r"^model\.embed_tokens\.weight$", "tok_embeddings.weight"),
    (r"^model\.norm\.weight$", "norm.weight"),
    (r"^lm_head\.weight$", "output.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"layers.\1.attention_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"layers.\1.ffn_norm.weight"),
    (
        r"^model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight$",
        r"layers.\1.attention.w\2.weight",
    ),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$", r"layers.\1.feed_forward.w1.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.weight$", r"layers.\1.feed_forward.w2.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.weight$", r"layers.\1.feed_forward.w3.weight"),
]


def mistral_tensor_name(hf_name):
    """The mistral-inference name of a transformers tensor name.

    Example:
    >>> mistral_tensor_name("model.layers.3.mlp.gate_proj.weight")
    'layers.3.feed_forward.w1.weight'
    """
    for pattern, replacement in _HF_TO_MISTRAL:
        name, count = re.subn(pattern, replacement, hf_name)
        if count:
            return name
    raise ValueError(f"No mistral-inference name for tensor `{hf_name}`.")


def rope_permute(weight, num_heads):
    """Reorders q/k projection rows from Mistral's to transformers' RoPE layout.

    mistral-inference rotates interleaved pairs `(x[2i], x[2i+1])` of each
    head; transformers (and mistral_hub) rotate halves `(x[i], x[i+d/2])`.
    Permuting the rows of `wq`/`wk` per head maps one onto the other (the
    same permutation as transformers' conversion script).

    Args:
        weight: array `(num_heads * head_dim, hidden)`.
        num_heads: int.

    Returns:
        The permuted array, same shape.
    """
    rows, hidden = weight.shape
    head_dim = rows // num_heads
    return (
        weight.reshape(num_heads, head_dim // 2, 2, hidden)
        .transpose(0, 2, 1, 3)
        .reshape(rows, hidden)
    )


def rope_unpermute(weight, num_heads):
    """Inverse of `rope_permute` (transformers -> Mistral layout)."""
    rows, hidden = weight.shape
    head_dim = rows // num_heads
    return (
        weight.reshape(num_heads, 2, head_dim // 2, hidden)
        .transpose(0, 2, 1, 3)
        .reshape(rows, hidden)
    )
