"""Conversion between transformers' `MistralForCausalLM` format and ours."""

import numpy as np

_SUPPORTED_ACTIVATIONS = ("silu", "swish")


def backbone_kwargs_from_hf_config(config):
    """Maps a transformers Mistral `config.json` dict to backbone kwargs.

    Args:
        config: dict parsed from a transformers `config.json`.

    Returns:
        A dict of `MistralBackbone` constructor arguments.

    Raises:
        ValueError: if the config is not a Mistral config or uses features
            the backbone does not implement.
    """
    model_type = config.get("model_type")
    if model_type != "mistral":
        raise ValueError(
            "Expected a transformers config with `model_type: \"mistral\"`. "
            f"Received: model_type={model_type!r}"
        )
    activation = config.get("hidden_act", "silu")
    if activation not in _SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"Only the SiLU MLP activation is supported. Received: hidden_act={activation!r}"
        )
    rope_parameters = config.get("rope_parameters") or {}
    rope_scaling = config.get("rope_scaling") or rope_parameters
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise ValueError(
            "Only default and linear RoPE scaling are supported. "
            f"Received: rope_type={rope_type!r}"
        )
    scaling_factor = rope_scaling.get("factor", 1.0) if rope_type == "linear" else 1.0
    rope_theta = rope_parameters.get("rope_theta", config.get("rope_theta", 10000.0))
    return {
        "vocabulary_size": config["vocab_size"],
        "num_layers": config["num_hidden_layers"],
        "num_query_heads": config["num_attention_heads"],
        "hidden_dim": config["hidden_size"],
        "intermediate_dim": config["intermediate_size"],
        "num_key_value_heads": config.get(
            "num_key_value_heads", config["num_attention_heads"]
        ),
        "rope_max_wavelength": rope_theta,
        "rope_scaling_factor": float(scaling_factor),
        "layer_norm_epsilon": config.get("rms_norm_eps", 1e-6),
        "sliding_window": config.get("sliding_window"),
        "head_dim": config.get("head_dim"),
        "dropout": config.get("attention_dropout", 0.0),
    }


def hf_weight_map(backbone):
    """Pairs each transformers tensor name with a variable and a transform.

    Args:
        backbone: a `MistralBackbone`.

    Returns:
        A list of `(hf_name, variable, to_keras, to_hf)` where `to_keras`
        maps a transformers array to the variable's layout and `to_hf` maps
        back.
    """
    hidden_dim = backbone.hidden_dim
    head_dim = backbone.resolved_head_dim

    def identity(x):
        return x

    def transpose(x):
        return np.transpose(x)

    def heads_in(num_heads):
        # (heads * head_dim, hidden) -> (hidden, heads, head_dim)
        return (
            lambda x: np.transpose(x).reshape(hidden_dim, num_heads, head_dim),
            lambda x: np.transpose(x.reshape(hidden_dim, num_heads * head_dim)),
        )

    def heads_out(num_heads):
        # (hidden, heads * head_dim) -> (heads, head_dim, hidden)
        return (
            lambda x: np.transpose(x).reshape(num_heads, head_dim, hidden_dim),
            lambda x: np.transpose(x.reshape(num_heads * head_dim, hidden_dim)),
        )

    entries = [
        ("model.embed_tokens.weight", backbone.token_embedding.embeddings, identity, identity),
        ("model.norm.weight", backbone.layer_norm.scale, identity, identity),
    ]
    for i, layer in enumerate(backbone.transformer_layers):
        attention = layer._self_attention_layer
        prefix = f"model.layers.{i}"
        entries += [
            (f"{prefix}.input_layernorm.weight", layer._self_attention_layernorm.scale, identity, identity),
            (f"{prefix}.post_attention_layernorm.weight", layer._feedforward_layernorm.scale, identity, identity),
            (f"{prefix}.self_attn.q_proj.weight", attention._query_dense.kernel, *heads_in(backbone.num_query_heads)),
            (f"{prefix}.self_attn.k_proj.weight", attention._key_dense.kernel, *heads_in(backbone.num_key_value_heads)),
            (f"{prefix}.self_attn.v_proj.weight", attention._value_dense.kernel, *heads_in(backbone.num_key_value_heads)),
            (f"{prefix}.self_attn.o_proj.weight", attention._output_dense.kernel, *heads_out(backbone.num_query_heads)),
            (f"{prefix}.mlp.gate_proj.weight", layer._feedforward_gate_dense.kernel, transpose, transpose),
            (f"{prefix}.mlp.up_proj.weight", layer._feedforward_intermediate_dense.kernel, transpose, transpose),
            (f"{prefix}.mlp.down_proj.weight", layer._feedforward_output_dense.kernel, transpose, transpose),
        ]
    entries.append(
        ("lm_head.weight", backbone.token_embedding.reverse_embeddings, transpose, transpose)
    )
    return entries


def load_hf_weights(backbone, get_tensor, has_tensor, tie_word_embeddings=False):
    """Assigns transformers-format tensors to the backbone, one at a time.

    Tensors are fetched lazily through `get_tensor` so a memory-mapped
    checkpoint never has to be fully materialized. Each tensor keeps its own
    precision until it is cast to the variable's dtype.

    Args:
        backbone: a `MistralBackbone`.
        get_tensor: callable `name -> np.ndarray`.
        has_tensor: callable `name -> bool`.
        tie_word_embeddings: bool. When True (or when `lm_head.weight` is
            absent), the output projection reuses the input embedding.

    Raises:
        ValueError: on a missing tensor or a shape mismatch, naming both.
    """
    for hf_name, variable, to_keras, _ in hf_weight_map(backbone):
        source = hf_name
        if hf_name == "lm_head.weight" and (
            tie_word_embeddings or not has_tensor(hf_name)
        ):
            source = "model.embed_tokens.weight"
        if not has_tensor(source):
            raise ValueError(f"The checkpoint has no tensor named `{source}`.")
        value = to_keras(get_tensor(source))
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Shape mismatch for `{source}` -> `{variable.path}`: checkpoint "
                f"gives {tuple(value.shape)}, the model expects {tuple(variable.shape)}."
            )
        variable.assign(value)
