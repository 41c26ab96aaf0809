"""Mistral checkpoints: transformers' `MistralForCausalLM` and Mistral's format.

Maps transformers' `config.json` and Mistral's `params.json` to
`MistralBackbone` arguments, and transformers tensors to backbone variables
(both ways); `MistralCheckpointConverter` gives them to the generic loaders
and exporter in `mistral_hub.utils.transformers`, which the family
registers (see `mistral_hub.models.mistral`).
"""


import numpy as np

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_hf_tokenizer import MistralHFTokenizer
from mistral_hub.models.mistral.mistral_tekken_tokenizer import MistralTekkenTokenizer
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.utils import validation
from mistral_hub.utils.presets import registry
from mistral_hub.utils.transformers.mistral_format import mistral_tensor_name
from mistral_hub.utils.transformers.mistral_format import rope_permute
from mistral_hub.utils.transformers.mistral_format import rope_unpermute  # noqa: F401
from mistral_hub.utils.transformers.checkpoint_weights import FLOAT_DTYPES

_SUPPORTED_ACTIVATIONS = ("silu", "swish")


def _config_error(what, message):
    return ValueError(f"{what}: {message}")


def _required(config, key):
    if key not in config:
        raise ValueError(f"the required key `{key}` is missing.")
    return config[key]


def backbone_kwargs_from_hf_config(config, what="the transformers config"):
    """Maps a transformers Mistral `config.json` dict to backbone kwargs.

    Every value the backbone uses is validated under its transformers name:
    sizes must be positive ints, `rms_norm_eps`, `rope_theta` and the RoPE
    factor finite numbers above 0, `attention_dropout` in `[0, 1)`.

    Args:
        config: dict parsed from a transformers `config.json`.
        what: str. How to name the config in error messages.

    Returns:
        A dict of `MistralBackbone` constructor arguments.

    Raises:
        ValueError: naming the key, for a missing or invalid value, a
            non-Mistral config, or features the backbone does not implement.

    Example:
    >>> backbone_kwargs_from_hf_config({"model_type": "mistral",
    ...     "vocab_size": 100, "num_hidden_layers": 2, "hidden_size": 32,
    ...     "intermediate_size": 64, "num_attention_heads": 4})["num_key_value_heads"]
    4
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
    for key in ("rope_parameters", "rope_scaling"):
        if not isinstance(config.get(key) or {}, dict):
            raise _config_error(what, f"`{key}` must be an object. Received: {config[key]!r}")
    rope_parameters = config.get("rope_parameters") or {}
    rope_scaling = config.get("rope_scaling") or rope_parameters
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise ValueError(
            "Only default and linear RoPE scaling are supported. "
            f"Received: rope_type={rope_type!r}"
        )
    try:
        scaling_factor = 1.0
        if rope_type == "linear":
            scaling_factor = validation.check_positive_float(
                "factor", _required(rope_scaling, "factor")
            )
        heads = validation.check_positive_int(
            "num_attention_heads", _required(config, "num_attention_heads")
        )
        # transformers defaults a missing or null `num_key_value_heads` to
        # the number of query heads (multi-head attention).
        kv_heads = config.get("num_key_value_heads")
        return {
            "vocabulary_size": validation.check_positive_int(
                "vocab_size", _required(config, "vocab_size")
            ),
            "num_layers": validation.check_positive_int(
                "num_hidden_layers", _required(config, "num_hidden_layers")
            ),
            "num_query_heads": heads,
            "hidden_dim": validation.check_positive_int(
                "hidden_size", _required(config, "hidden_size")
            ),
            "intermediate_dim": validation.check_positive_int(
                "intermediate_size", _required(config, "intermediate_size")
            ),
            "num_key_value_heads": heads
            if kv_heads is None
            else validation.check_positive_int("num_key_value_heads", kv_heads),
            "rope_max_wavelength": validation.check_positive_float(
                "rope_theta", rope_parameters.get("rope_theta", config.get("rope_theta", 10000.0))
            ),
            "rope_scaling_factor": float(scaling_factor),
            "layer_norm_epsilon": validation.check_positive_float(
                "rms_norm_eps", config.get("rms_norm_eps", 1e-6)
            ),
            "sliding_window": validation.check_positive_int(
                "sliding_window", config.get("sliding_window"), allow_none=True
            ),
            "head_dim": validation.check_positive_int(
                "head_dim", config.get("head_dim"), allow_none=True
            ),
            "dropout": validation.check_finite_float(
                "attention_dropout", config.get("attention_dropout", 0.0), 0, 1,
                include_high=False,
            ),
        }
    except ValueError as e:
        raise _config_error(what, str(e)) from None


# `MistralBackbone` arguments and the transformers `config.json` keys they
# come from, to name the key a user has to fix.
HF_CONFIG_KEYS = {
    "vocabulary_size": "vocab_size",
    "num_layers": "num_hidden_layers",
    "num_query_heads": "num_attention_heads",
    "hidden_dim": "hidden_size",
    "intermediate_dim": "intermediate_size",
    "num_key_value_heads": "num_key_value_heads",
    "rope_max_wavelength": "rope_theta",
    "layer_norm_epsilon": "rms_norm_eps",
    "sliding_window": "sliding_window",
    "head_dim": "head_dim",
    "dropout": "attention_dropout",
}


def hf_tie_word_embeddings(config, what="the transformers config"):
    """`tie_word_embeddings` of a transformers config (False when absent).

    Raises:
        ValueError: unless it is a JSON bool (`"no"` or 0 are refused).
    """
    try:
        return validation.check_bool(
            "tie_word_embeddings", config.get("tie_word_embeddings", False)
        )
    except ValueError as e:
        raise _config_error(what, str(e)) from None


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
        tie_word_embeddings: bool. When True the output projection reuses
            the input embedding; when False `lm_head.weight` must be given.

    Raises:
        ValueError: on a missing tensor, a shape mismatch or an integer
            tensor for a float weight, naming the tensor.
    """
    for hf_name, variable, to_keras, _ in hf_weight_map(backbone):
        source = hf_name
        if hf_name == "lm_head.weight" and tie_word_embeddings:
            source = "model.embed_tokens.weight"
        if not has_tensor(source):
            raise ValueError(f"The checkpoint has no tensor named `{source}`.")
        value = np.asarray(get_tensor(source))
        if value.dtype.name not in FLOAT_DTYPES:
            raise ValueError(
                f"Tensor `{source}` has dtype {value.dtype.name}, but `{variable.path}` "
                "holds floats; integer weights are not cast."
            )
        value = to_keras(value)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Shape mismatch for `{source}` -> `{variable.path}`: checkpoint "
                f"gives {tuple(value.shape)}, the model expects {tuple(variable.shape)}."
            )
        variable.assign(value)


# --- transformers config export ---------------------------------------------


def hf_config_from_backbone(backbone, max_position_embeddings=32768, dtype=None):
    """Builds a transformers `MistralConfig` dict for a backbone.

    Unlike keras_hub's exporter, `head_dim` is the head size the backbone
    really uses (explicit for Magistral-style models), and RoPE scaling is
    written out.

    Args:
        backbone: a `MistralBackbone`.
        max_position_embeddings: int. Written as is; Mistral models have no
            learned positions, so it only bounds transformers' generation.
        dtype: str. The `dtype` to record; defaults to the backbone's
            variable dtype.

    Returns:
        A JSON-serializable dict for `config.json`.

    Example:
    >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
    >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=1,
    ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
    ...     num_key_value_heads=1, head_dim=6, sliding_window=None)
    >>> config = hf_config_from_backbone(backbone)
    >>> config["head_dim"], config["sliding_window"]
    (6, None)
    """
    import keras

    dtype = dtype or keras.backend.standardize_dtype(backbone.token_embedding.embeddings.dtype)
    rope_theta = float(backbone.rope_max_wavelength)
    rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    config = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "intermediate_size": backbone.intermediate_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "head_dim": backbone.resolved_head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(backbone.layer_norm_epsilon),
        "rope_theta": rope_theta,
        "sliding_window": backbone.sliding_window,
        "max_position_embeddings": int(max_position_embeddings),
        "attention_dropout": float(backbone.dropout),
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    if backbone.rope_scaling_factor != 1.0:
        factor = float(backbone.rope_scaling_factor)
        rope_parameters.update({"rope_type": "linear", "factor": factor})
        config["rope_scaling"] = {"rope_type": "linear", "type": "linear", "factor": factor}
    config["rope_parameters"] = rope_parameters
    return config


# --- Mistral's own format (mistral-inference `params.json`) ------------------

_UNSUPPORTED_PARAMS = {
    "moe": "mixture-of-experts (Mixtral-style) models",
    "yarn": "YaRN RoPE scaling",
    "llama_4_scaling": "Llama 4 attention scaling",
}


def _params_int(params, key, default=None, allow_none=False):
    value = params.get(key, default)
    # Some params.json files write numbers as strings ("4096").
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value is None and not allow_none:
        raise ValueError(f"the required key `{key}` is missing.")
    return validation.check_positive_int(key, value, allow_none=allow_none)


def backbone_kwargs_from_mistral_params(params, what="params.json"):
    """Maps a mistral-inference `params.json` dict to backbone kwargs.

    Sizes must be positive ints (or strings of digits, which some files
    hold), `norm_eps` and `rope_theta` finite numbers above 0.

    Args:
        params: dict parsed from `params.json` (`dim`, `n_layers`,
            `head_dim`, `hidden_dim`, `n_heads`, `n_kv_heads`, `norm_eps`,
            `vocab_size`, `rope_theta`, `sliding_window`).
        what: str. How to name the file in error messages.

    Returns:
        A dict of `MistralBackbone` constructor arguments.

    Raises:
        ValueError: naming the key, for missing or invalid values, or
            architectures the backbone does not implement.

    Example:
    >>> backbone_kwargs_from_mistral_params({"dim": 32, "n_layers": 2,
    ...     "head_dim": 8, "hidden_dim": 64, "n_heads": 4, "n_kv_heads": 2,
    ...     "norm_eps": 1e-5, "vocab_size": 100})["sliding_window"] is None
    True
    """
    for key, feature in _UNSUPPORTED_PARAMS.items():
        if params.get(key):
            raise ValueError(
                f"This Mistral checkpoint uses {feature} (`{key}` in "
                "params.json), which `MistralBackbone` does not implement."
            )
    sliding_window = params.get("sliding_window")
    if isinstance(sliding_window, (list, tuple)):
        if len(set(sliding_window)) != 1:
            raise ValueError(
                "Per-layer sliding windows are not supported. Received: "
                f"sliding_window={sliding_window!r}"
            )
        sliding_window = sliding_window[0]
    try:
        heads = _params_int(params, "n_heads")
        return {
            "vocabulary_size": _params_int(params, "vocab_size"),
            "num_layers": _params_int(params, "n_layers"),
            "num_query_heads": heads,
            "hidden_dim": _params_int(params, "dim"),
            "intermediate_dim": _params_int(params, "hidden_dim"),
            "num_key_value_heads": _params_int(params, "n_kv_heads", default=heads),
            "rope_max_wavelength": validation.check_positive_float(
                "rope_theta", params.get("rope_theta", 10000.0)
            ),
            "rope_scaling_factor": 1.0,
            "layer_norm_epsilon": validation.check_positive_float(
                "norm_eps", params.get("norm_eps", 1e-5)
            ),
            "sliding_window": _params_int(
                {"sliding_window": sliding_window}, "sliding_window", allow_none=True
            ),
            "head_dim": _params_int(params, "head_dim", allow_none=True),
            "dropout": 0,
        }
    except ValueError as e:
        raise _config_error(what, str(e)) from None


# `MistralBackbone` arguments and the `params.json` keys they come from.
MISTRAL_PARAMS_KEYS = {
    "vocabulary_size": "vocab_size",
    "num_layers": "n_layers",
    "num_query_heads": "n_heads",
    "hidden_dim": "dim",
    "intermediate_dim": "hidden_dim",
    "num_key_value_heads": "n_kv_heads",
    "rope_max_wavelength": "rope_theta",
    "layer_norm_epsilon": "norm_eps",
    "sliding_window": "sliding_window",
    "head_dim": "head_dim",
}


def mistral_tied_embeddings(params, what="params.json"):
    """`tied_embeddings` of a `params.json` (False when absent).

    Raises:
        ValueError: unless it is a JSON bool.
    """
    try:
        return validation.check_bool("tied_embeddings", params.get("tied_embeddings", False))
    except ValueError as e:
        raise _config_error(what, str(e)) from None


def _chat_template_from_jinja(tokenizer, jinja_template):
    """The chat convention when the checkpoint's template rules out v7.

    A vocabulary may reserve `[SYSTEM_PROMPT]` without its model using it
    (Mistral NeMo's Tekken vocabulary). `tokenizer.json` does not record the
    version that tells, but a Jinja chat template without `[SYSTEM_PROMPT]`
    does. Returns None (infer from the vocabulary) otherwise.
    """
    if (
        jinja_template is None
        or "[SYSTEM_PROMPT]" in jinja_template
        or tokenizer._control_token_id("[SYSTEM_PROMPT]") is None
        or tokenizer._control_token_id("[INST]") is None
    ):
        return None
    return "tekken" if tokenizer._text_prefix == "" else "v3"


class MistralCheckpointConverter(registry.CheckpointConverter):
    """Reads and writes Mistral checkpoints for the generic loaders.

    Example:
    >>> converter = MistralCheckpointConverter()
    >>> converter.backbone_kwargs_from_native_params({"dim": 8, "n_layers": 1,
    ...     "n_heads": 2, "n_kv_heads": 1, "hidden_dim": 16, "vocab_size": 10,
    ...     "norm_eps": 1e-5}, "params.json")["hidden_dim"]
    8
    """

    backbone_cls = MistralBackbone
    transformers_model_types = ("mistral",)
    transformers_architecture = "MistralForCausalLM"
    transformers_base_architecture = "MistralModel"
    hf_config_keys = HF_CONFIG_KEYS
    native_params_keys = MISTRAL_PARAMS_KEYS

    def claims_native_params(self, params):
        # Mistral's dense models define the format; what they do not support
        # (e.g. mixture of experts) `backbone_kwargs_from_native_params`
        # refuses by name.
        return True

    backbone_kwargs_from_hf_config = staticmethod(backbone_kwargs_from_hf_config)
    hf_tie_word_embeddings = staticmethod(hf_tie_word_embeddings)
    backbone_kwargs_from_native_params = staticmethod(backbone_kwargs_from_mistral_params)
    native_tied_embeddings = staticmethod(mistral_tied_embeddings)
    native_tensor_name = staticmethod(mistral_tensor_name)
    hf_weight_map = staticmethod(hf_weight_map)
    hf_config_from_backbone = staticmethod(hf_config_from_backbone)
    chat_template_from_jinja = staticmethod(_chat_template_from_jinja)

    def native_tensor_transform(self, backbone_kwargs):
        head_dim = (
            backbone_kwargs["head_dim"]
            or backbone_kwargs["hidden_dim"] // backbone_kwargs["num_query_heads"]
        )

        def transform(name, value):
            # Rows arrive in whole heads, and the permutation is per head.
            if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
                return rope_permute(value, value.shape[0] // head_dim)
            return value

        return transform

    def tokenizer_class(self, file_name):
        if file_name == "tokenizer.json":
            return MistralHFTokenizer
        if file_name.endswith(".json"):
            return MistralTekkenTokenizer
        return MistralTokenizer


def write_tekken_for_transformers(directory, tokenizer, model_max_length):
    """Writes `tekken.json`; returns its `tokenizer_config.json` dict."""
    # transformers reads Tekken vocabularies through mistral-common.
    tokenizer.save_assets(directory)
    return {
        "tokenizer_class": "MistralCommonBackend",
        "model_max_length": model_max_length,
    }
