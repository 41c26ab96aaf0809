"""Dtype policies of loaded and trained models.

Two rules live here:

- Loading: which policy a loaded backbone gets. An explicit `dtype=` wins;
  then a global policy the user set with `keras.config.set_dtype_policy()`
  (any policy other than Keras' default `"float32"`); then the dtype saved
  in the preset or checkpoint, so a bfloat16 checkpoint stays bfloat16 for
  inference.
- Training: Keras optimizers compute their update in each variable's dtype.
  For bfloat16 variables Adam's `beta_2=0.999` rounds to 1.0, so its bias
  correction `sqrt(1 - beta_2**t)` is exactly 0 and every update is zero
  (the loss never moves, whatever the learning rate); other optimizers lose
  updates smaller than half a bfloat16 step to rounding. Before training, 16-bit trainable
  variables are therefore moved to float32 storage and their layers switched
  to the matching mixed policy (`"mixed_bfloat16"`: float32 variables,
  bfloat16 compute), which is what loading with `dtype="mixed_bfloat16"`
  gives.
"""

import warnings

import keras

from mistral_hub.utils import backend

HALF_PRECISION_DTYPES = ("bfloat16", "float16")


def user_dtype_policy():
    """The name of the global dtype policy if the user set one, else None.

    Keras' default global policy is `"float32"`; any other one was chosen
    with `keras.config.set_dtype_policy()` (or `set_floatx()`) and wins over
    the dtype saved in a preset.

    Example:
    >>> import keras
    >>> user_dtype_policy() is None
    True
    >>> keras.config.set_dtype_policy("mixed_bfloat16")
    >>> user_dtype_policy()
    'mixed_bfloat16'
    >>> keras.config.set_dtype_policy("float32")
    """
    name = keras.config.dtype_policy().name
    return None if name == "float32" else name


def _dtype(variable):
    return keras.backend.standardize_dtype(variable.dtype)


def _half_precision_trainable_variables(model):
    return [v for v in model.trainable_variables if _dtype(v) in HALF_PRECISION_DTYPES]


def promote_for_training(model, optimizer=None, stacklevel=2):
    """Moves 16-bit trainable variables to float32 storage, in place.

    The variables keep their identity (layers, optimizers and saved-weight
    paths still refer to them) and their values (bfloat16 and float16 values
    are exact in float32). A layer that owns a promoted variable gets the
    mixed version of its policy (`"bfloat16"` -> `"mixed_bfloat16"`,
    `"int8_from_bfloat16"` -> `"int8_from_mixed_bfloat16"`), so it still
    computes in 16 bits. When no 16-bit variable is left (full
    fine-tuning), every layer, the model included, gets the mixed policy and
    computes exactly as if it had been loaded with it (Keras does not
    autocast embedding variables, so a `ReversibleEmbedding`'s float32
    reverse kernel then gives float32 logits). Frozen 16-bit
    variables (e.g. a quantized layer's scales) stay 16-bit. A warning says
    what changed and how to avoid it.

    Args:
        model: a built `keras.Model`.
        optimizer: optional optimizer; if already built, its 16-bit slot
            variables are promoted too.
        stacklevel: int. Passed to `warnings.warn`.

    Returns:
        The promoted model variables (an empty list if there were none).

    Example:
    >>> import warnings
    >>> import keras
    >>> model = keras.Sequential([keras.layers.Dense(2, dtype="bfloat16")])
    >>> model.build((None, 3))
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     len(promote_for_training(model))
    2
    >>> model.layers[0].kernel.dtype, model.layers[0].dtype_policy.name
    ('float32', 'mixed_bfloat16')
    """
    promoted = _half_precision_trainable_variables(model)
    if not promoted:
        return []
    dtypes = sorted({_dtype(v) for v in promoted})
    slots = []
    if optimizer is not None and optimizer.built:
        slots = [v for v in optimizer.variables if _dtype(v) in HALF_PRECISION_DTYPES]
    backend.store_variables_in_float32(model, promoted + slots)
    promoted_ids = {id(v) for v in promoted}
    everything = not any(_dtype(v) in HALF_PRECISION_DTYPES for v in model.weights)
    for layer in model._flatten_layers(include_self=True):
        owned = layer._trainable_variables + layer._non_trainable_variables
        if everything or any(id(v) in promoted_ids for v in owned):
            policy = mixed_policy(layer_policy(layer))
            if policy is not None:
                layer.dtype_policy = policy
    size = sum(_size(v) for v in promoted)
    names = "/".join(dtypes)
    warnings.warn(
        f"`{type(model).__name__}` has {len(promoted)} trainable {names} "
        f"variables ({size:,} values). Keras optimizers cannot train them in "
        "16 bits (updates are computed in the variable's dtype, where Adam's "
        "update is exactly zero), so they were moved to float32 storage with "
        f"{names} compute (`mixed_{dtypes[0]}` policy), doubling their "
        f"memory. To avoid this, load with `dtype=\"mixed_{dtypes[0]}\"` "
        "(or `\"float32\"`) to train, or train LoRA adapters "
        "(`backbone.enable_lora(rank)`).",
        stacklevel=stacklevel + 1,
    )
    return promoted


def _size(variable):
    size = 1
    for dim in variable.shape:
        size *= int(dim)
    return size


def layer_policy(layer):
    """The policy a layer computes with (its own entry if it holds a map).

    Layers of a model loaded with a `DTypePolicyMap` (a quantized preset)
    all hold the map; their own policy is the map's entry for their path.
    """
    policy = layer.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        policy = policy[layer.path] if layer.path else policy.default_policy
    return policy


def mixed_policy(policy):
    """The mixed (float32 storage) twin of a 16-bit policy, else None."""
    compute = keras.backend.standardize_dtype(policy.compute_dtype)
    variable = keras.backend.standardize_dtype(policy.variable_dtype)
    if compute not in HALF_PRECISION_DTYPES or variable != compute:
        return None
    config = keras.dtype_policies.serialize(policy)
    key = "source_name" if policy.quantization_mode is not None else "name"
    config["config"][key] = f"mixed_{compute}"
    return keras.dtype_policies.deserialize(config)
